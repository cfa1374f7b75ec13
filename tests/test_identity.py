"""Study identity and the accuracy key: every field that changes a number is in them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoinfer import identity as ident
from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.identity import accuracy_key, first_difference, identity_hash, study_identity
from tests.conftest import fake_config

BASE = TrialPoint("transformers", "int8", "none", 1, "cpu:1")


def config(tmp: Path, **over: Any) -> Any:
    data = fake_config(tmp, **over)
    data["space"] = {**data["space"], "engine": ["fake", "transformers", "llama.cpp"], "quantization": ["int8"]}
    return parse_config(data, base_dir=str(tmp))


def key(tmp: Path, point: TrialPoint = BASE, **over: Any) -> str:
    c = config(tmp, **over)
    return accuracy_key(study_identity(c), c, point)


def test_the_accuracy_key_ignores_what_does_not_change_a_score(tmp_path: Path) -> None:
    same = [
        TrialPoint("transformers", "int8", "prompt_lookup:3", 1, "cpu:1"),
        TrialPoint("transformers", "int8", "none", 16, "cpu:2"),
        TrialPoint("transformers", "int8", "none", 1, "cpu"),
    ]
    assert all(key(tmp_path, p) == key(tmp_path) for p in same)
    different = [
        TrialPoint("transformers", "bf16", "none", 1, "cpu:1"),
        TrialPoint("llama.cpp", "Q8_0", "none", 1, "cpu:1"),
        TrialPoint("transformers", "int8", "none", 1, "cuda:0"),
    ]
    assert all(key(tmp_path, p) != key(tmp_path) for p in different)


def test_the_resolved_int_backend_is_in_the_key(tmp_path: Path) -> None:
    quanto = key(tmp_path, transformers={"int_backend": "optimum-quanto"})
    torchao = key(tmp_path, transformers={"int_backend": "torchao"})
    auto = key(tmp_path)  # auto resolves int8 on CPU to torchao
    assert quanto != torchao and auto == torchao
    assert json.loads(quanto)["engine_settings"] == {"int_backend": "optimum-quanto"}


def test_the_weights_digest_not_the_name_is_in_the_key(tmp_path: Path) -> None:
    before = key(tmp_path)
    (tmp_path / "fake-model" / "weights.bin").write_bytes(b"other weights, same path")
    assert key(tmp_path) != before


def test_data_file_content_is_in_the_key(tmp_path: Path) -> None:
    data = tmp_path / "arc.jsonl"
    data.write_text('{"id": "1"}\n')
    tasks = {"tasks": [{"name": "arc_easy", "data_files": {"test": str(data)}}], "limit": 4}
    before = key(tmp_path, accuracy=tasks)
    data.write_text('{"id": "2"}\n')
    assert key(tmp_path, accuracy=tasks) != before


def test_eval_settings_are_in_the_key(tmp_path: Path) -> None:
    base = key(tmp_path)
    for over in ({"batch_size": 8}, {"limit": 5}, {"num_fewshot": 1}, {"metric": "acc_norm"}):
        assert key(tmp_path, accuracy=over) != base, over


@pytest.mark.parametrize(
    ("package", "point"), [("lm_eval", BASE), ("llama_cpp_python", TrialPoint("llama.cpp", "Q8_0", "none", 1, "cpu:1"))]
)
def test_library_versions_are_in_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, point: TrialPoint
) -> None:
    before = key(tmp_path, point)
    real = ident._version
    monkeypatch.setattr(ident, "_version", lambda p: "99.0" if p == package else real(p))
    assert key(tmp_path, point) != before


def test_identity_names_the_first_changed_field(tmp_path: Path) -> None:
    a = study_identity(config(tmp_path))
    b = study_identity(config(tmp_path, workload={"max_new_tokens": 9}))
    assert first_difference(a, b) == ("workload.max_new_tokens", "8", "9")
    assert identity_hash(a) != identity_hash(b)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    c = study_identity(config(tmp_path, workload={"prompts": str(prompts)}))
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(4)))
    d = study_identity(config(tmp_path, workload={"prompts": str(prompts)}))
    assert first_difference(c, d)[0] == "workload.prompts"  # the file's content, not its name
    assert any(k.startswith("machine.") and k.endswith(".cpu_count") for k in a)
    assert "engine.llama.cpp.llama_cpp_python" in a


def _pinned(tmp: Path, *targets: str) -> Any:
    c = config(tmp)
    space = c.space.model_copy(update={"hardware": ["cpu:1", "cpu:2"]})
    return c.model_copy(update={"space": space, "search": c.search.model_copy(update={"hardware": list(targets)})})


def test_each_target_keeps_the_machine_that_measured_it(tmp_path: Path) -> None:
    here = study_identity(_pinned(tmp_path, "cpu:1"))
    assert "machine.cpu:1.cpu" in here and "machine.cpu:2.cpu" not in here
    # A worker on another machine that measures another target adds its own fields: no conflict.
    there = {k.replace("cpu:1", "cpu:2"): ("Other CPU" if k.endswith(".cpu") else v) for k, v in here.items()}
    assert first_difference(here, there) is None and first_difference(there, here) is None
    # The same target on another machine is a change: its numbers would not compare.
    moved = {k: ("Other CPU" if k == "machine.cpu:1.cpu" else v) for k, v in here.items()}
    assert first_difference(here, moved) == ("machine.cpu:1.cpu", here["machine.cpu:1.cpu"], "Other CPU")
    # A trial's fingerprint holds its own target's machine, not the others'.
    assert identity_hash(here, "fake", "cpu:1") != identity_hash(moved, "fake", "cpu:1")
    assert identity_hash(here, "fake", "cpu:2") == identity_hash(moved, "fake", "cpu:2")


def test_an_identity_from_before_machines_per_target_still_compares(tmp_path: Path) -> None:
    current = study_identity(_pinned(tmp_path, "cpu:1", "cpu:2"))
    legacy = {k: v for k, v in current.items() if not k.startswith("machine.")}
    legacy.update({f"machine.{f}": current[f"machine.cpu:1.{f}"] for f in ("cpu", "cpu_count", "gpus")})
    assert first_difference(ident.upgrade(legacy, current), current) is None
    legacy["machine.cpu"] = "Another CPU"
    assert first_difference(ident.upgrade(legacy, current), current)[0] in ("machine.cpu:1.cpu", "machine.cpu:2.cpu")


def test_scores_from_another_machine_are_not_reused(tmp_path: Path) -> None:
    c = _pinned(tmp_path, "cpu:1")
    here = study_identity(c)
    there = {k: ("Other CPU" if k.endswith(".cpu") else v) for k, v in here.items()}
    assert accuracy_key(here, c, BASE) != accuracy_key(there, c, BASE)


def test_a_growing_space_is_not_a_change(tmp_path: Path) -> None:
    small = study_identity(config(tmp_path))
    c = config(tmp_path)
    grown = study_identity(
        c.model_copy(
            update={"space": c.space.model_copy(update={"draft": ["none", f"model:{tmp_path / 'fake-model'}"]})}
        )
    )
    assert any(k.startswith("draft.") for k in grown)
    assert first_difference(small, grown) is None and first_difference(grown, small) is None
    assert identity_hash(small) == identity_hash(grown)


def test_a_trials_fingerprint_holds_its_engines_versions(tmp_path: Path) -> None:
    a = study_identity(config(tmp_path))
    key = "engine.llama.cpp.llama_cpp_python"
    b = {**a, key: "0.0.1"}  # another llama.cpp build
    assert identity_hash(a) == identity_hash(b)  # the study's shared part does not see engine versions
    assert identity_hash(a, "llama.cpp") != identity_hash(b, "llama.cpp")  # a llama.cpp trial's does
    assert identity_hash(a, "transformers") == identity_hash(b, "transformers")  # a transformers trial's not


def test_vllms_compile_mode_is_in_the_key_and_its_kv_cache_size_in_the_identity(tmp_path: Path) -> None:
    eager = TrialPoint("vllm", "bf16", "none", 1, "cpu:1", compile_mode="eager")
    compiled = TrialPoint("vllm", "bf16", "none", 1, "cpu:1", compile_mode="compiled")
    assert json.loads(key(tmp_path, eager))["engine_settings"] == {"enforce_eager": True}
    assert json.loads(key(tmp_path, compiled))["engine_settings"] == {"enforce_eager": False}
    c = parse_config({**fake_config(tmp_path), "space": {"engine": ["vllm"], "quantization": ["bf16"]}},
                     base_dir=str(tmp_path))  # fmt: skip
    sized = c.model_copy(update={"vllm": c.vllm.model_copy(update={"kv_cache_gb": 2.0})})
    field = "engine.vllm.kv_cache_gb"
    assert study_identity(c)[field] == "sized per trial" and study_identity(sized)[field] == "2.0"
    assert first_difference(study_identity(c), study_identity(sized)) == (field, "sized per trial", "2.0")


REPO = Path(__file__).resolve().parents[1]
GSM8K = {"name": "gsm8k_cot", "data_files": {"test": str(REPO / "data" / "gsm8k" / "test.jsonl")}}


def test_unset_shots_and_metric_read_as_each_tasks_own(tmp_path: Path) -> None:
    # An ARC study from before num_fewshot and metric could be unset wrote "0" and "acc": it still does.
    arc = study_identity(config(tmp_path))
    assert (arc["accuracy.num_fewshot"], arc["accuracy.metric"]) == ("0", "acc")
    explicit = study_identity(config(tmp_path, accuracy={"num_fewshot": 0, "metric": "acc"}))
    assert first_difference(arc, explicit) is None
    gsm = study_identity(config(tmp_path, accuracy={"tasks": [GSM8K]}))
    assert (gsm["accuracy.num_fewshot"], gsm["accuracy.metric"]) == ("8", "exact_match,strict-match")
    eight = study_identity(config(tmp_path, accuracy={"tasks": [GSM8K], "num_fewshot": 8}))
    assert first_difference(gsm, eight) is None  # the task's own 8, written out: the same eval
    arc_task = config(tmp_path).accuracy.model_dump(exclude_none=True)["tasks"][0]
    both = study_identity(config(tmp_path, accuracy={"tasks": [GSM8K, arc_task]}))
    assert json.loads(both["accuracy.num_fewshot"]) == {"gsm8k_cot": "8", "arc_easy": "0"}
    assert json.loads(both["accuracy.metric"]) == {"gsm8k_cot": "exact_match,strict-match", "arc_easy": "acc"}
    capped = study_identity(config(tmp_path, accuracy={"tasks": [{**GSM8K, "max_gen_toks": 32}]}))
    assert first_difference(gsm, capped)[0] == "accuracy.tasks"


def test_generative_keys_hold_threads_and_vllms_batch(tmp_path: Path) -> None:
    gen = {"accuracy": {"tasks": [GSM8K]}}
    one = TrialPoint("llama.cpp", "int8", "none", 1, "cpu:1")
    batch8 = TrialPoint("llama.cpp", "int8", "none", 8, "cpu:1")
    threads2 = TrialPoint("llama.cpp", "int8", "none", 1, "cpu:2")
    assert key(tmp_path, one) == key(tmp_path, batch8) == key(tmp_path, threads2)  # ARC: log-likelihoods
    # llama.cpp generates at accuracy.batch_size whatever the trial's batch; threads move near-ties.
    assert key(tmp_path, one, **gen) == key(tmp_path, batch8, **gen) != key(tmp_path, threads2, **gen)
    v1, v8 = TrialPoint("vllm", "bf16", "none", 1, "cpu:1"), TrialPoint("vllm", "bf16", "none", 8, "cpu:1")
    assert key(tmp_path, v1, **gen) != key(tmp_path, v8, **gen) and key(tmp_path, v1) == key(tmp_path, v8)


def test_a_draft_enters_the_key_where_its_output_is_scored(tmp_path: Path) -> None:
    """vLLM and transformers generate an eval with the trial's draft; llama.cpp's eval generates
    with the target alone; log-likelihood tasks never see a draft."""
    gen = {"accuracy": {"tasks": [GSM8K]}}
    for engine, drafted_scored in (("vllm", True), ("transformers", True), ("llama.cpp", False)):
        plain = TrialPoint(engine, "bf16", "none", 1, "cpu:1")
        lookup = TrialPoint(engine, "bf16", "prompt_lookup:3", 1, "cpu:1")
        longer = TrialPoint(engine, "bf16", "prompt_lookup:3", 1, "cpu:1", draft_tokens=5)
        assert key(tmp_path, plain) == key(tmp_path, lookup)  # ARC: log-likelihoods of the target
        gen_keys = {key(tmp_path, p, **gen) for p in (plain, lookup, longer)}
        assert len(gen_keys) == (3 if drafted_scored else 1), engine
