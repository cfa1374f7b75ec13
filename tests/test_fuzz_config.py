"""Malformed and hostile configs, generated: every one is refused with one line naming where, exit 2,
no traceback, and nothing written (no study, no MLflow store)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoinfer import cli
from tests.conftest import fake_config

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)  # fmt: skip
SECTIONS = ["model", "space", "workload", "accuracy", "energy", "search", "mlflow", "transformers"]


def _set(cfg: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


@st.composite
def broken(draw: st.DrawFn, base: dict[str, Any]) -> str:
    """YAML text of a config that is wrong in one way (chosen and shaped by hypothesis)."""
    import copy

    cfg = copy.deepcopy(base)
    kind = draw(st.sampled_from([
        "unknown_key", "wrong_type", "bad_batch", "empty_list", "missing_file", "bad_name", "bad_storage",
        "python_tag", "deep", "huge", "not_a_mapping", "bad_number", "missing_model",
    ]))  # fmt: skip
    if kind == "unknown_key":
        section = draw(st.sampled_from([None, *SECTIONS]))
        key = "zz_" + draw(st.text(alphabet="abcdefgh_", min_size=1, max_size=8))
        (cfg if section is None else cfg.setdefault(section, {}))[key] = draw(JUNK)
    elif kind == "wrong_type":
        word = draw(st.text(alphabet="xyz", min_size=1, max_size=8))  # never a number or a known name
        choices = [
            (["space", "batch_size"], word),
            (["space", "batch_size"], [[word]]),
            (["space", "batch_size"], 2.5),
            (["workload", "max_new_tokens"], word),
            (["workload", "max_new_tokens"], {"n": 1}),
            (["workload", "max_new_tokens"], 7.5),
            (["search", "trials"], [word]),
            (["search", "trials"], None),
            (["space", "quantization"], 42),
            (["space", "quantization"], {word: 1}),
            (["accuracy", "limit"], word),
            (["model"], word),
            (["model"], [1, 2]),
            (["objectives"], word),
            (["objectives"], [{"name": 3}]),
        ]
        path, value = draw(st.sampled_from(choices))
        _set(cfg, path, value)
    elif kind == "bad_batch":
        _set(cfg, ["space", "batch_size"], [draw(st.one_of(st.integers(max_value=0), st.integers(min_value=10**6)))])
    elif kind == "empty_list":
        _set(cfg, ["space", draw(st.sampled_from(["quantization", "batch_size", "hardware", "engine", "draft"]))], [])
    elif kind == "missing_file":
        where = draw(st.sampled_from(["data", "prompts", "model"]))
        missing = "/nonexistent/" + draw(st.text(alphabet="abc", min_size=1, max_size=6)) + ".jsonl"
        if where == "data":
            cfg["accuracy"]["tasks"][0]["data_files"]["test"] = missing
        elif where == "prompts":
            cfg["workload"]["prompts"] = missing
        else:
            cfg["model"]["source"] = missing
    elif kind == "bad_name":
        path = draw(st.sampled_from([["space", "engine"], ["space", "hardware"], ["space", "draft"]]))
        _set(
            cfg,
            path,
            [draw(st.sampled_from(["tensorrt", "cuda:97", "tpu:0", "model:", "prompt_lookup:-3", "early_exit:x"]))],
        )
        if path[1] == "engine":
            cfg["objectives"] = [{"name": draw(st.sampled_from(["tokens_per_s", "joules_per_banana"]))}]
    elif kind == "bad_storage":
        cfg["search"]["storage"] = draw(st.sampled_from([
            "postgresql://u:pw@127.0.0.1:1/db", "mysql://nowhere/db", "not a url", "sqlite:////proc/forbidden/x.db",
        ]))  # fmt: skip
    elif kind == "bad_number":
        path = draw(
            st.sampled_from(
                [
                    ["energy", "cpu_watts_per_core"],
                    ["workload", "repeats"],
                    ["search", "trial_timeout_s"],
                    ["workload", "prompt_count"],
                ]
            )
        )
        cfg.setdefault(path[0], {})
        _set(cfg, path, draw(st.sampled_from([float("nan"), float("inf"), -1, 0, -(10**9)])))
    elif kind == "missing_model":
        del cfg["model"]
    text = yaml.safe_dump(cfg)
    if kind == "python_tag":
        tag = draw(
            st.sampled_from(
                [
                    "!!python/object/apply:os.system ['echo pwned']",
                    "!!python/name:os.system",
                    "!!python/object:collections.OrderedDict {}",
                ]
            )
        )
        text = text.replace("chat_template: false", f"chat_template: {tag}")
    elif kind == "deep":
        depth = draw(st.integers(min_value=500, max_value=20000))
        text = "x: " + "[" * depth + "]" * depth + "\n" + text
    elif kind == "huge":
        text = text + "padding:\n" + "".join(f"  k{i}: {'v' * 50}\n" for i in range(draw(st.integers(20000, 60000))))
    elif kind == "not_a_mapping":
        text = draw(st.sampled_from(["- a\n- b\n", "42\n", "", "just text\n", "~\n", "[1, 2"]))
    return text


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fuzzbase")
    cfg = fake_config(tmp)
    cfg["search"]["storage"] = "sqlite:///store/optuna.db"  # relative to the run's directory
    cfg["mlflow"] = {"tracking_uri": "sqlite:///store/mlflow.db", "artifact_location": "store/artifacts"}
    return cfg


@settings(max_examples=220, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_malformed_configs_are_one_line_exit_2_and_write_nothing(
    data: st.DataObject, base: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    work = tmp_path_factory.mktemp("fuzz")
    (work / "c.yaml").write_text(data.draw(broken(base)))
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["autoinfer", "search", "c.yaml"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert e.value.code == 2, out.err[-2000:]
    assert "Traceback" not in out.err + out.out
    assert len(lines) == 1 and lines[0].startswith("error: c.yaml"), out.err[-2000:]
    assert not (work / "store").exists() and not (work / "mlruns").exists()  # nothing written
