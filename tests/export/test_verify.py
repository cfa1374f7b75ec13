"""`autoinfer verify` against a stand-in server: outputs compared, files checked, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoinfer.cache import file_digest
from autoinfer.errors import ConfigError
from autoinfer.export.verify import VerifyFailed, verify

FAKE = Path(__file__).with_name("fake_server.py")
REPO = Path(__file__).resolve().parents[2]
GEN = {
    "prompt_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
    "output_ids": [[10, 11, 2], [12, 13, 14], [15]],
    "texts": ["hello world", "a b c", "x"],
}


def write_deploy(tmp: Path, server_args: str = "", trial_tps: float = 1.0) -> Path:
    side = tmp / "d.outputs.json"
    side.write_text(json.dumps(GEN))
    gguf = tmp / "m.gguf"
    gguf.write_bytes(b"the measured weights")
    data = {
        "engine": "llama.cpp",
        "batch_size": 2,
        "generation": {"max_new_tokens": 8, "ignore_eos": False, "do_sample": False},
        "runtime": {
            "gguf": {"path": "m.gguf", "sha256": file_digest(gguf)},
            "serve": f"{sys.executable} {FAKE} --outputs d.outputs.json {server_args}",
        },
        "measured": {
            "trial": 3,
            "metrics": {"tokens_per_s": trial_tps, "ttft_p50_s": 0.01, "latency_p50_s": 0.02, "latency_p95_s": 0.03},
            "repeats": 2,
            "outputs_file": side.name,
            "outputs_sha256": file_digest(side),
            "mlflow_run_id": None,
        },
    }
    path = tmp / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_identical_outputs_pass(tmp_path: Path) -> None:
    report = verify(write_deploy(tmp_path))
    assert report.passed, report.failures
    assert report.identical == report.prompts == 3 and report.server_version == "fake-server"
    assert report.served["tokens_per_s"] > 1 and 0 < report.served["ttft_p50_s"] <= report.served["latency_p95_s"]


def test_a_different_output_fails_naming_the_prompt(tmp_path: Path) -> None:
    report = verify(write_deploy(tmp_path, "--wrong 1"))
    assert not report.passed and report.identical == 2
    assert "prompt 1 differs at character 5" in report.failures[0]


def test_slower_than_the_tolerance_fails(tmp_path: Path) -> None:
    report = verify(write_deploy(tmp_path, trial_tps=1e9), tolerance=0.8)
    assert report.identical == 3 and len(report.failures) == 1 and "tolerance 80%" in report.failures[0]


def test_another_file_at_the_gguf_path_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    path = write_deploy(tmp_path, f"--pidfile {tmp_path}/pid")
    (tmp_path / "m.gguf").write_bytes(b"another level")
    with pytest.raises(VerifyFailed, match=r"runtime.gguf.path: .*m.gguf is not the file the trial measured"):
        verify(path)
    assert not (tmp_path / "pid").exists()


def test_missing_gguf_and_outputs_are_config_errors(tmp_path: Path) -> None:
    path = write_deploy(tmp_path)
    (tmp_path / "m.gguf").unlink()
    with pytest.raises(ConfigError, match=r"runtime.gguf.path: .*does not exist") as e:
        verify(path)
    assert e.value.exit_code == 2
    (tmp_path / "d.outputs.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"measured.outputs_file: .*does not match its recorded sha256"):
        verify(path)


def test_a_server_that_dies_is_reported_with_its_last_line(tmp_path: Path) -> None:
    with pytest.raises(VerifyFailed, match="exited with status 1: error: failed to load model"):
        verify(write_deploy(tmp_path, "--crash"))


def _cli(path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autoinfer", "verify", str(path), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_cli_exit_codes_and_one_line_failure(tmp_path: Path) -> None:
    ok = _cli(write_deploy(tmp_path))
    out, errs = ok.communicate(timeout=120)
    assert ok.returncode == 0, errs
    assert "identical outputs" in out and "3/3" in out and "verified" in out
    bad = _cli(write_deploy(tmp_path, "--wrong 0"))
    out, errs = bad.communicate(timeout=120)
    assert bad.returncode == 1 and "Traceback" not in errs
    assert errs.strip().splitlines()[-1].startswith("error: ") and "prompt 0 differs" in errs


def _wait_for(path: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.1)
    time.sleep(1.0)  # inside the requests by now
    return int(path.read_text())


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_stopping_verify_leaves_no_server_behind(tmp_path: Path, sig: signal.Signals) -> None:
    pidfile = tmp_path / "pid"
    proc = _cli(write_deploy(tmp_path, f"--pidfile {pidfile} --delay 5"), "--no-log")
    server = _wait_for(pidfile)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode in (130, 128 + signal.SIGTERM, -signal.SIGKILL)
    assert _gone(server), f"server {server} outlived verify after {sig.name}"
