"""Shared fixtures: a tiny randomly initialised llama with a real (tiny) BPE tokenizer, and configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# The `requires` marker's hooks: a test needing a missing engine or model is skipped, or fails in CI.
from tests.requires import pytest_configure, pytest_runtest_setup  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ARC_DIR = REPO / "data" / "arc_easy"

# The fake engine registers itself in this process, in spawned trial processes (which inherit the
# environment and sys.path) and in CLI subprocesses (which need the repository on PYTHONPATH).
os.environ["AUTOINFER_PLUGINS"] = "tests.fake_engine"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
import tests.fake_engine  # noqa: E402, F401 - registers "fake" here even if autoinfer was imported first


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep test runs from reading or writing the user's ~/.cache/autoinfer.
    monkeypatch.setenv("AUTOINFER_CACHE", str(tmp_path_factory.getbasetemp() / "autoinfer-cache"))


def _train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from autoinfer.evaluators.workload import BUILTIN_CHAT

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = BUILTIN_CHAT * 5 + ["Question: Which of these is a mammal?\nAnswer: a whale"] * 5
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer llama (hidden 64) with random weights: real code paths, milliseconds per token."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    _train_tokenizer(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,  # the default 0.02 makes a model that repeats one token whatever the prompt
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


# Search limits under which no window counts as busy. Tests about the busy-machine guard set their
# own; every other test that runs a search must not depend on the machine being quiet: a developer's
# other work, or a CI VM whose hypervisor steals a steady 11 % (seen: it failed a trial as busy).
ANY_LOAD: dict[str, float] = {"max_other_cpu_pct": 100, "max_steal_pct": 100}


def _config(source: Path, space: dict[str, Any], tmp: Path, over: dict[str, Any]) -> dict[str, Any]:
    """A small, fast config dict storing everything under `tmp`; `over` replaces or merges sections."""
    cfg: dict[str, Any] = {
        "model": {"source": str(source), "chat_template": False},
        "space": {**space, "draft": ["none", "prompt_lookup:2"], "batch_size": [1, 2], "hardware": ["cpu:1"]},
        "workload": {"max_new_tokens": 8, "repeats": 2, "warmup": 0},
        "accuracy": {
            "tasks": [{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}],
            "limit": 4,
            "batch_size": 4,
        },
        "objectives": [
            {"name": "correct_tokens_per_j", "direction": "maximize"},
            {"name": "tokens_per_s", "direction": "maximize"},
        ],
        "search": {"trials": 3, "seed": 1, "storage": f"sqlite:///{tmp}/optuna.db", "study_name": "t", **ANY_LOAD},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "artifacts")},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def base_config(model_dir: Path, tmp: Path, **over: Any) -> dict[str, Any]:
    """A config dict around the tiny model (transformers, fp32 and bf16)."""
    return _config(model_dir, {"quantization": ["fp32", "bf16"]}, tmp, over)


def fake_config(tmp: Path, **over: Any) -> dict[str, Any]:
    """A config dict for the fake engine (no model loaded): seconds per trial."""
    model = tmp / "fake-model"  # its content digest is the study's weights identity
    model.mkdir(exist_ok=True)
    if not (model / "weights.bin").exists():
        (model / "weights.bin").write_bytes(b"fake weights")
    return _config(model, {"engine": ["fake"], "quantization": ["fp32", "int8"]}, tmp, over)


@pytest.fixture
def tiny_config(tiny_model_dir: Path, tmp_path: Path) -> Any:
    from autoinfer.config import parse_config

    return parse_config(base_config(tiny_model_dir, tmp_path), base_dir=str(tmp_path))
