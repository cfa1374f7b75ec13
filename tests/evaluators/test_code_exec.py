"""The confinement of model-written code, on canned programs (no model): each hostile program is
scored a failure inside its limits, nothing is left running and nothing is written outside its
temporary directory. Which guards held is printed (pytest -s) and asserted where the machine
gives them (root: setuid; namespaces where the kernel allows)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autoinfer.errors import TrialError
from autoinfer.evaluators import code_exec
from autoinfer.evaluators.code_exec import (
    ALLOW_ENV,
    CodeExecutionNotAllowed,
    ExecLimits,
    program_with_tests,
    run_program,
    run_programs,
)

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0
FAST = ExecLimits(timeout_s=1.5, cpu_s=1, processes=16)


@pytest.fixture(autouse=True)
def allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "1")


def _running(uid: int) -> list[str]:
    """Processes of `uid` still alive (zombies included): pid and command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        if int(uids[0]) == uid:
            found.append(f"{entry.name} {cmd}")
    return found


def _run_uid(r: code_exec.ExecResult) -> int:
    return int(next(g for g in r.guards if g.startswith("setuid:")).split(":")[1])


def test_refused_without_the_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_ENV)
    with pytest.raises(CodeExecutionNotAllowed, match=r"accuracy.allow_code_execution: true"):
        run_program("print(1)")
    with pytest.raises(TrialError):  # the trial fails in one line, the study goes on
        run_programs(["print(1)", "print(2)"])
    monkeypatch.setenv(ALLOW_ENV, "yes")  # only "1" switches it on
    with pytest.raises(CodeExecutionNotAllowed):
        run_program("print(1)")


def test_right_wrong_and_broken_programs() -> None:
    right = program_with_tests("def add(a, b):\n    return a + b", ["assert add(2, 3) == 5", "assert add(0, 0) == 0"])
    wrong = program_with_tests("def add(a, b):\n    return a * b", ["assert add(2, 3) == 5"])
    broken = program_with_tests("def add(a, b)\n    return a + b", ["assert add(2, 3) == 5"])
    early = program_with_tests("import sys\nsys.exit(0)", ["assert False"])
    results = run_programs([right, wrong, broken, early])
    assert [r.reason for r in results] == [
        "passed",
        "failed",
        "error: SyntaxError: expected ':'",
        "error: the program exited before its tests ran",
    ]
    assert [r.passed for r in results] == [True, False, False, False]
    assert results[1].returncode == 1 and "AssertionError" in results[1].stderr_tail
    print("guards here:", results[0].guards)
    assert "rlimits" in results[0].guards
    if ROOT:  # limits on processes bind only below root: a uid of the run's own
        assert _run_uid(results[0]) >= 2_100_000_000
        assert _run_uid(results[0]) != _run_uid(results[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        results[0].passed = False  # type: ignore[misc]


def test_output_is_kept_and_the_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOINFER_TEST_SECRET", "s3cret")
    r = run_program("import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])")
    assert r.passed, r
    assert "['HOME', 'LC_ALL', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR']" in r.stdout_tail
    assert "True" in r.stdout_tail and "s3cret" not in r.stdout_tail


def test_infinite_loops_time_out_within_the_limit() -> None:
    spin, sleep = run_programs(["while True:\n    pass", "import time\nwhile True:\n    time.sleep(1)"], FAST)
    assert (spin.passed, spin.reason) == (False, "timeout")
    assert spin.wall_s < FAST.timeout_s + 0.5  # the CPU limit (1 s) or the wall clock, whichever first
    assert (sleep.passed, sleep.reason) == (False, "timeout")  # no CPU spent: the wall clock ends it
    assert FAST.timeout_s <= sleep.wall_s < FAST.timeout_s + 0.5


def test_fork_bomb_is_contained_and_nothing_is_left_running() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    # A child that leaves the process group (setsid) and would outlive a killpg.
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\ntime.sleep(300)\n"
    start = time.monotonic()
    results = run_programs([bomb, escape], FAST)
    assert [(r.passed, r.reason) for r in results] == [(False, "timeout")] * 2
    assert time.monotonic() - start < 2 * FAST.timeout_s + 4
    if ROOT:
        for r in results:
            assert _running(_run_uid(r)) == []


def test_writes_outside_the_temporary_directory_fail() -> None:
    tag = secrets.token_hex(6)
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    targets = [home / f"autoinfer-probe-{tag}", Path("/root") / f"autoinfer-probe-{tag}", REPO / f"probe-{tag}"]
    shared_tmp = Path(tempfile.gettempdir()) / f"autoinfer-probe-{tag}"
    programs = [f"open({str(t)!r}, 'w').write('x')" for t in [*targets, shared_tmp]]
    # `~` is the program's own directory (HOME points there): the write succeeds and goes with it.
    programs.append(f"import os\nopen(os.path.expanduser('~/probe-{tag}'), 'w').write('x')")
    results = run_programs(programs)
    for target, r in zip(targets, results[:3], strict=True):
        assert not r.passed and r.reason.startswith("error: "), (target, r)
        assert not target.exists()
    tmp_result, tilde = results[3], results[4]
    if "ro-root" in tmp_result.guards:
        assert not tmp_result.passed and "Read-only file system" in tmp_result.reason
        assert not shared_tmp.exists()
    else:
        shared_tmp.unlink(missing_ok=True)
    assert tilde.passed
    assert not (home / f"probe-{tag}").exists()


def test_huge_allocation_and_large_files_fail() -> None:
    small_disk = ExecLimits(disk_bytes=8 << 20, file_size_bytes=4_000_000)
    alloc, big_file, fill = run_programs(
        [
            "b = bytearray(10**11)",
            "open('big', 'wb').write(b'x' * 5_000_000)",
            "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 3_000_000)\n    i += 1",
        ],
        small_disk,
    )
    assert (alloc.passed, alloc.reason) == (False, "error: MemoryError")
    assert not big_file.passed and "File too large" in big_file.reason
    assert not fill.passed
    if f"tmpfs:{8 << 20}" in fill.guards:
        assert "No space left on device" in fill.reason


def test_no_network_where_the_network_namespace_holds() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        r = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()")
        if "netns" not in r.guards:
            pytest.skip(f"no network namespace here (guards: {r.guards}); the connection was {r.reason}")
        assert not r.passed and "Network is unreachable" in r.reason
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    dns = run_program("import socket\nsocket.getaddrinfo('example.com', 443)")
    assert not dns.passed and "gaierror" in dns.reason


@pytest.mark.skipif(not ROOT, reason="needs root to start a process as another uid")
def test_an_unprivileged_caller_gets_user_namespaces() -> None:
    """Where autoinfer does not run as root: the same guards through a user namespace (where the
    kernel allows one), RLIMIT_NPROC binding the caller's own uid."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 the unprivileged uid can run")
    uid = 65533
    script = (
        "import importlib.util, json, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('code_exec', {code_exec.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['code_exec'] = m; spec.loader.exec_module(m)\n"
        f"os.environ[{ALLOW_ENV!r}] = '1'\n"
        "lim = m.ExecLimits(timeout_s=1.5, cpu_s=1, processes=16)\n"
        "progs = ['assert 1 + 1 == 2', 'open(\"/tmp/autoinfer-nonroot-probe\", \"w\")',\n"
        "         'import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass']\n"
        "print(json.dumps([[r.passed, r.reason, list(r.guards)] for r in m.run_programs(progs, lim)]))\n"
    )
    out = subprocess.run(
        [python, "-I", "-c", script], user=uid, group=uid, extra_groups=[], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    (ok, ok_reason, guards), (tmp, tmp_reason, _), (bomb, bomb_reason, _) = json.loads(out.stdout)
    print("guards for an unprivileged caller:", guards)
    assert ok and ok_reason == "passed" and "rlimits" in guards
    assert not bomb and bomb_reason == "timeout"
    assert _running(uid) == []
    if "userns" not in guards:
        pytest.skip(f"unprivileged user namespaces are not allowed here (guards: {guards})")
    assert {"netns", "mountns", "ro-root", "pidns", "nested-userns:65534"} <= set(guards)
    assert not tmp and "Read-only file system" in tmp_reason
    assert not Path("/tmp/autoinfer-nonroot-probe").exists()


def test_a_failed_setup_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A confinement step that fails (here: the interpreter cannot be started) is an error, never
    a run with fewer guards than were set up."""
    monkeypatch.setattr(code_exec, "_interpreter", lambda: ("/nonexistent/python3", sys.base_prefix))
    r = run_program("print('ran')")
    assert not r.passed and r.reason.startswith("error: confinement: FileNotFoundError"), r
    assert "ran" not in r.stdout_tail
