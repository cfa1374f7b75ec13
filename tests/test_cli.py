from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import fake_config
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


def write_config(tmp_path: Path, **over: object) -> Path:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(fake_config(tmp_path, **over)))
    return tmp_path / "c.yaml"


# Trials long enough to be caught running: 16 prompts x 400 tokens x ~5 ms per fake step, per repeat.
SLOW = {"max_new_tokens": 400, "repeats": 3, "warmup": 0, "ignore_eos": True}
NO_ACC: dict[str, object] = {"accuracy": {"tasks": []}, "objectives": [{"name": "tokens_per_s"}]}


def wait_for_running(storage: str, proc: subprocess.Popen[str], need_done: int = 0) -> list[optuna.trial.FrozenTrial]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="t", storage=storage).trials
        except KeyError:
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(done) >= need_done and any(t.state == TrialState.RUNNING for t in trials):
            return done
    raise AssertionError("never saw a running trial")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_then_rerun_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) mid-trial: exit 128 + signal, the trial is recorded as interrupted; the
    same command resumes."""
    cfg = write_config(tmp_path, workload={**SLOW, "max_new_tokens": 60}, search={"trials": 3, "sampler": "grid"},
                       **NO_ACC)  # fmt: skip
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, "-m", "autoinfer", "search", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_done = wait_for_running(storage, proc, need_done=1)[0]
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out[-1500:] + err[-1500:]
    assert "run the same command again to resume" in err
    study = optuna.load_study(study_name="t", storage=storage)
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(stopped) == 1 and stopped[0].state == TrialState.FAIL
    assert stopped[0].user_attrs["fail_reason"] == "interrupted (Ctrl-C or SIGTERM)"
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=storage)
    assert study.trials[first_done.number].datetime_complete == first_done.datetime_complete  # not re-run
    measured = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(measured) == 3
    retry = [t for t in measured if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retry) == 1 and retry[0].params == stopped[0].params


def children_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"  # a zombie is dead, waiting to be reaped


def test_kill_9_of_the_search_takes_its_trial_process_with_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, workload=SLOW, search={"trials": 1}, **NO_ACC)
    proc = subprocess.Popen([sys.executable, "-m", "autoinfer", "search", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    wait_for_running(f"sqlite:///{tmp_path}/optuna.db", proc)
    log = tmp_path / "artifacts" / "trial-logs" / "t" / "trial-0.log"
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # well inside the trial: past the child's start-up, generating
    trial_procs = [c for c in children_of(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(trial_procs) == 1 and alive(trial_procs[0])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while alive(trial_procs[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(trial_procs[0]), "the trial process outlived the search"


def test_a_changed_setup_stops_with_one_line_and_fresh_goes_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, search={"trials": 1, "sampler": "grid"}, **NO_ACC)
    cmd = [sys.executable, "-m", "autoinfer", "search", str(cfg)]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300).returncode == 0
    write_config(tmp_path, search={"trials": 1, "sampler": "grid"}, workload={"max_new_tokens": 4}, **NO_ACC)
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"error: {cfg}: workload.max_new_tokens: changed since study 't'")
    assert "(8 -> 4)" in lines[0] and "--fresh" in lines[0]
    r = subprocess.run([*cmd, "--fresh"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Pareto frontier of t-" in r.stdout


def test_frontier_table_has_a_column_per_objective_and_constraint_and_reads_whole_in_a_file(tmp_path: Path) -> None:
    objectives = [
        {"name": "tokens_per_s", "direction": "maximize"},
        {"name": "latency_p50_s", "direction": "minimize"},
        {"name": "j_per_token", "direction": "minimize"},
    ]
    cfg = write_config(tmp_path, search={"trials": 2, "sampler": "grid"}, objectives=objectives,
                       constraints=["peak_memory_gb <= 64"], accuracy={"tasks": []})  # fmt: skip
    log = tmp_path / "log.txt"
    with log.open("w") as out:  # a file, not a terminal: no width to fit
        r = subprocess.run([sys.executable, "-m", "autoinfer", "search", str(cfg)], cwd=tmp_path, stdout=out,
                           stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    text = log.read_text()
    table = text[text.index("Pareto frontier of t") :]
    for header in ("tokens_per_s", "latency_p50_s", "j_per_token", "peak_memory_gb", "(s)", "(J/tok)", "(GB)"):
        assert header in table, (header, table)
    assert "…" not in table  # nothing cut to fit a width
    rows = [line for line in table.splitlines() if line.startswith("│ ") and "fake" in line]
    assert rows, table
    for line in rows:  # every row carries a value (not '-') in the latency column
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert len(cells) == 2 + 4 and all(c not in ("", "-") for c in cells[2:]), cells
