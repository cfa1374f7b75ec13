from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from tests.conftest import base_config
from tests.test_config import run_cli


def test_help_on_every_command() -> None:
    for cmd in ("search", "validate", "hardware", "pareto", "export"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_hardware_lists_cpu_with_labelled_meter() -> None:
    r = run_cli("hardware")
    assert r.returncode == 0, r.stderr
    assert "cpu:1" in r.stdout
    assert ("estimated:cpu-time" in r.stdout) or ("measured:rapl" in r.stdout)


def test_missing_config_file_exit_2() -> None:
    r = run_cli("validate", "/nonexistent/c.yaml")
    assert r.returncode == 2
    assert "cannot read config" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_then_rerun_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-trial: exit 130, the trial is recorded as interrupted; the same command resumes."""
    cfg = base_config(
        tiny_model_dir,
        tmp_path,
        accuracy={"tasks": []},
        objectives=[{"name": "tokens_per_s"}],
        # long enough generations that the second trial is surely still running when we interrupt
        workload={"max_new_tokens": 200, "repeats": 3, "warmup": 0, "ignore_eos": True},
        search={"trials": 3, "sampler": "grid"},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    storage = cfg["search"]["storage"]
    cmd = [sys.executable, "-m", "autoinfer", "search", "c.yaml"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    first_done = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="t", storage=storage).trials
        except KeyError:
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done and any(t.state == TrialState.RUNNING for t in trials):
            first_done = done[0]
            break
    assert first_done is not None, "never saw a finished trial and a running one"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-1500:] + err[-1500:]
    assert "run the same command again to resume" in err
    study = optuna.load_study(study_name="t", storage=storage)
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(stopped) == 1 and stopped[0].state == TrialState.FAIL
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=storage)
    assert study.trials[first_done.number].datetime_complete == first_done.datetime_complete  # not re-run
    measured = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(measured) == 3
    retry = [t for t in measured if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retry) == 1 and retry[0].params == stopped[0].params
