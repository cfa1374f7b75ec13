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
from autoinfer.export.verify import VerifyFailed, speed_failure, verify

FAKE = Path(__file__).with_name("fake_server.py")
REPO = Path(__file__).resolve().parents[2]
GEN = {
    "prompt_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
    "output_ids": [[10, 11, 2], [12, 13, 14], [15]],
    "texts": ["hello world", "a b c", "x"],
}
# The stand-in's speed, set without timing anything: it waits DELAY before each chunk (one word,
# one token), so a pass of GEN at batch 2 takes at least 3 delays for its 6 tokens (prompts 0 and 1
# together, 2 and 3 words; prompt 2's one word after prompt 0). Served tokens/s is at most TOP_TPS
# however fast the machine, and under it only by the HTTP overhead, small against 3 delays.
DELAY = 0.4
TOP_TPS = 6 / (3 * DELAY)


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


def paced(tmp: Path, served_over_trial: float, server_args: str = "") -> Path:
    """A deployment whose stand-in serves at most `served_over_trial` times the trial's tokens/s."""
    return write_deploy(tmp, f"--delay {DELAY} {server_args}", trial_tps=TOP_TPS / served_over_trial)


def test_identical_outputs_pass(tmp_path: Path) -> None:
    report = verify(paced(tmp_path, 1.2))  # served/trial in (0.8, 1.2]: inside the default band
    assert report.passed, report.failures
    assert report.identical == report.prompts == 3 and report.server_version == "fake-server"
    assert (report.tolerance, report.max_ratio) == (0.8, 1.5)
    assert 0 < report.served["tokens_per_s"] <= TOP_TPS
    assert 0 < report.served["ttft_p50_s"] <= report.served["latency_p95_s"]


def test_a_different_output_fails_naming_the_prompt(tmp_path: Path) -> None:
    report = verify(write_deploy(tmp_path, "--wrong 1"))
    assert not report.passed and report.identical == 2
    assert "prompt 1 differs at character 5" in report.failures[0]


def test_slower_than_the_tolerance_fails(tmp_path: Path) -> None:
    report = verify(write_deploy(tmp_path, trial_tps=1e9), tolerance=0.8)
    assert report.identical == 3 and len(report.failures) == 1 and "tolerance 80%" in report.failures[0]


def test_the_speed_band_has_two_sides() -> None:
    assert speed_failure(100, 100, 0.8, 1.5) == speed_failure(120, 100, 0.8, 1.5) == ""
    assert speed_failure(80, 100, 0.8, 1.5) == speed_failure(150, 100, 0.8, 1.5) == ""  # the bounds pass
    assert "is 79% of the trial's 100.0 (tolerance 80%, band 0.80-1.50)" in speed_failure(79, 100, 0.8, 1.5)
    # The case the upper side is for: a trial measured at 53 tok/s on a busy machine, served at 105.5.
    fast = speed_failure(105.5, 53, 0.8, 1.5)
    assert "1.99x the trial's 53.0 (above --max-ratio 1.50): the trial's figure is off" in fast
    assert fast.endswith("re-measure the trial")
    assert speed_failure(1e6, 1, 0.8, float("inf")) == ""  # --max-ratio inf: the old one-sided check


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
    ok = _cli(paced(tmp_path, 1.2))
    out, errs = ok.communicate(timeout=120)
    assert ok.returncode == 0, errs
    assert "identical outputs" in out and "3/3" in out and "verified" in out
    assert "tok/s ratio passes in 0.80-1.50" in out
    bad = _cli(write_deploy(tmp_path, "--wrong 0"))
    out, errs = bad.communicate(timeout=120)
    assert bad.returncode == 1 and "Traceback" not in errs
    assert errs.strip().splitlines()[-1].startswith("error: ") and "prompt 0 differs" in errs


def test_cli_fails_a_server_twice_as_fast_as_its_trial(tmp_path: Path) -> None:
    """The trial's figure is what is wrong then (measured on a busy machine), and so is its rank."""
    fast = _cli(paced(tmp_path, 2.0), "--no-log")  # served/trial at most 2, above 1.5 but for overhead
    out, errs = fast.communicate(timeout=120)
    assert fast.returncode == 1 and "Traceback" not in errs and "3/3" in out
    last = errs.strip().splitlines()[-1]
    assert last.startswith("error: ") and "x the trial's" in last and "(above --max-ratio 1.50)" in last
    assert last.endswith(
        "the trial's figure is off (measured on a busy machine?), and so is its rank; re-measure the trial"
    )
    # A wider band passes the same server.
    wide = _cli(paced(tmp_path, 2.0), "--no-log", "--max-ratio", "3")
    out, errs = wide.communicate(timeout=120)
    assert wide.returncode == 0, errs
    assert "tok/s ratio passes in 0.80-3.00" in out and "verified" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-ratio", "1"], "--max-ratio: must be above 1 (got 1.0)"),
        (["--max-ratio", "0.9"], "--max-ratio: must be above 1 (got 0.9)"),
        (["--tolerance", "1.2"], "--tolerance: must be a fraction between 0 and 1 (got 1.2)"),
        (["--tolerance", "0"], "--tolerance: must be a fraction between 0 and 1 (got 0.0)"),
    ],
)
def test_cli_refuses_a_band_that_does_not_hold_1(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = _cli(tmp_path / "never-read.yaml", *flags)
    _, errs = proc.communicate(timeout=120)
    assert proc.returncode == 2 and errs.strip().splitlines() == [f"error: {message}"]


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
