"""Run one model-written program and its tests, confined: the executor behind pass@1 of code tasks.

This is a guard, not a security sandbox. It keeps a program a model wrote by mistake (a loop that
never ends, a fork in a loop, a write to the wrong place, a huge allocation, a stray network call)
from hurting the machine or the study, and scores it as a failure. It is not built, reviewed or
tested to hold against a program written to escape it: kernel bugs, whatever the interpreter and
its libraries can reach, side channels and exhaustion of anything no limit below covers are out of
its scope. Run code from models you would not run on this machine by hand in a disposable VM or
container of its own.

Opt-in. Nothing runs unless the environment holds AUTOINFER_ALLOW_CODE_EXECUTION=1, which the
configuration sets when `accuracy.allow_code_execution: true`; otherwise every entry point raises
CodeExecutionNotAllowed (a TrialError: one line, the trial fails, the study goes on).

How one program runs. The parent writes the program, the item's setup code and test asserts, and a
random end marker into `prog.py` in a fresh temporary directory (the file's last statement prints
the marker: a program that exits early does not pass). It starts a launcher, this file run as a
script by an isolated interpreter (`python -I -S -B`, standard library only), in a session and
process group of its own, with a minimal environment (PATH; HOME and TMPDIR set to the temporary
directory; LC_ALL: nothing inherited, so no keys or tokens), stdin from /dev/null, stdout and
stderr into files of the parent's. The launcher sets up what the kernel allows and forks a small
init process, which applies the limits, gives up privilege, forks the program (`python -I -B
prog.py`, cwd the temporary directory), reaps what it leaves and reports its exit status and CPU
time. Which mechanisms held comes back through a pipe into `ExecResult.guards`:

- "rlimits" (always): RLIMIT_AS 1 GiB, RLIMIT_CPU 5 s (SIGXCPU, SIGKILL a second later),
  RLIMIT_FSIZE 10 MB per file written (stdout and stderr included), RLIMIT_NOFILE 64,
  RLIMIT_NPROC 64 and RLIMIT_CORE 0. RLIMIT_NPROC does not bind root, hence what follows.
- "setuid:<uid>" (autoinfer running as root): the init process drops to a uid and gid of the
  run's own, no supplementary groups, before the program starts: RLIMIT_NPROC binds, root's
  capabilities are gone, and what only root may write (its home) is out of reach. The uid is
  fresh for each run (2,100,000,000 plus a random 24-bit number: above the ranges systems give
  users, DynamicUser services and containers, below 2^31), so the processes of one run never count
  against another's RLIMIT_NPROC, nor against a service's running as nobody.
- "userns" and "nested-userns:65534" (not root, where the kernel allows unprivileged user
  namespaces): the launcher enters a user namespace of its own (root in it, the caller's uid
  outside) to get the namespaces below; the init process then enters a nested one as uid 65534
  there, so the program holds no capability over the mounts and network set up for it.
  RLIMIT_NPROC binds: the caller's uid is not root (and kernels from 5.14 count it per user
  namespace, so the caller's other processes do not use up the program's 64).
- "netns": a new network namespace whose only interface, loopback, is down: no connection to
  127.0.0.1 or anywhere, no DNS.
- "mountns" and "ro-root": a private mount namespace in which every mount is made read-only and
  nosuid, recursively (mount_setattr): nothing outside the program's directory can be written,
  not the user's home, not the repository, not /tmp or /dev/shm. /proc stays writable (a process
  writes its own /proc/self files; the nested uid map is one).
- "tmpfs:<bytes>": the program's directory is a tmpfs of 64 MiB mounted over the temporary
  directory inside the namespace, mode 0700, owned by the program's uid: filling it gives ENOSPC,
  and what the program wrote disappears with the namespace.
- "hide:<dir>" (when dropping uid): the first directory above the interpreter that the run's uid
  may not enter (/root, for a pyenv Python) is covered by a read-only tmpfs that shows only the
  interpreter's installation, bind-mounted read-only: the program can start, and sees nothing else
  of that directory.
- "pidns": a new PID namespace whose init is the init process: when it exits, or is killed, the
  kernel kills every process left in it, including any that started a session of its own. The
  init process and the program have PR_SET_PDEATHSIG=SIGKILL: each dies with its parent.

At the end, on success as on failure, the parent kills the init process if it is still there
(through a pidfd; its PID namespace goes with it), then the launcher's whole process group
(SIGKILL), and removes the temporary directory. A wall-clock timeout (10 s) covers the whole run.
Namespaces are taken where the kernel gives them and recorded, never assumed; the uid change (as
root) and the nested user namespace (where the outer one held) fail closed: if one fails, nothing
runs and the result is "error: confinement: ...".

Where each holds. Measured on the build machines (root with every capability, kernel 6.18): all of
them (rlimits, netns, mountns, ro-root, tmpfs, hide:/root, pidns, setuid:<uid>); and for a caller
that is not root there (tests/evaluators/test_code_exec.py runs one as uid 65533): rlimits, userns,
nested-userns, netns, mountns, ro-root, tmpfs, pidns. Expected, not tested here: as an ordinary
user where unprivileged user namespaces are off (a sysctl, or AppArmor's restriction on Ubuntu
24.04), and as root in a container without CAP_SYS_ADMIN whose seccomp profile refuses unshare
(Docker's default), rlimits and (as root) setuid only: no network isolation, no read-only view (the
program may write wherever its uid may, /tmp included; as an ordinary user that is the user's
home), and a process that leaves its process group can outlive the run; as root there, the
interpreter must also be one any uid can run (a pyenv Python under /root is not, and every item
then ends in "error: confinement"). The program runs on the base interpreter of the running
Python (not the virtual environment's), with its standard library and its own site-packages.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

try:
    from autoinfer.errors import TrialError as _Refusal
except ImportError:  # run as the launcher script (python -I -S): the standard library only
    _Refusal = RuntimeError  # type: ignore[misc,assignment]

ALLOW_ENV = "AUTOINFER_ALLOW_CODE_EXECUTION"
_CONFINE_FAILED = 125  # the init process could not set up or start the program: it did not run
_TAIL = 2000  # characters of stdout and stderr kept in a result

# Linux constants (linux/sched.h, linux/mount.h, linux/prctl.h, fcntl.h).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 0x1, 0x2, 0x4
_MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC = 0x20, 0x1000, 0x2000, 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 0x2
_SYS_MOUNT_SETATTR = 442  # x86_64 and arm64 alike: numbers from 424 on are shared (alpha aside)
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_PR_SET_PDEATHSIG = 1
_RUN_UID_BASE = 2_100_000_000  # fresh uids per run: base + 24 random bits
_NOBODY = 65534  # the program's uid inside a nested user namespace


class CodeExecutionNotAllowed(_Refusal):
    """Running model-written code was not switched on."""


def code_execution_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "") == "1"


def require_code_execution_allowed() -> None:
    if not code_execution_allowed():
        raise CodeExecutionNotAllowed(
            "running model-written code is off: a code task needs accuracy.allow_code_execution: true "
            f"(which sets {ALLOW_ENV}=1 for the trial)"
        )


@dataclass(frozen=True)
class ExecLimits:
    timeout_s: float = 10.0  # wall clock for the whole run, launcher included
    cpu_s: int = 5  # RLIMIT_CPU of each process (SIGXCPU; SIGKILL one second later)
    address_space_bytes: int = 1 << 30  # RLIMIT_AS
    file_size_bytes: int = 10_000_000  # RLIMIT_FSIZE: the largest file a process may write
    processes: int = 64  # RLIMIT_NPROC: processes (threads count) of the run's uid
    open_files: int = 64  # RLIMIT_NOFILE
    disk_bytes: int = 64 << 20  # size of the tmpfs that is the program's directory, where mounts hold
    uid: int | None = None  # uid and gid a root caller drops to; None: a fresh one for each run


DEFAULT_LIMITS = ExecLimits()


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    reason: str  # "passed" | "failed" (an assert) | "timeout" (wall or CPU) | "error: <what>"
    wall_s: float
    guards: tuple[str, ...] = ()  # the confinement mechanisms that held (see the module docstring)
    returncode: int | None = None  # the program's exit code, or -signal (-9: killed at the timeout); None: unknown
    cpu_s: float | None = None  # CPU seconds of the program's process and the children it reaped
    stdout_tail: str = ""
    stderr_tail: str = ""


def program_with_tests(program: str, tests: Sequence[str], setup: str = "") -> str:
    """The source that runs: the program, then the item's setup code, then its test statements."""
    parts = [program.rstrip(), setup.rstrip(), *(t.rstrip() for t in tests)]
    return "\n".join(p for p in parts if p) + "\n"


def run_program(source: str, limits: ExecLimits = DEFAULT_LIMITS) -> ExecResult:
    """Run `source` confined; it passes if it exits 0 having run to its end."""
    require_code_execution_allowed()
    marker = secrets.token_hex(16)
    full = (
        f"{source}\n\nimport os as _autoinfer_os, sys as _autoinfer_sys\n"
        f"_autoinfer_sys.stdout.flush()\n_autoinfer_os.write(1, b'\\n{marker}\\n')\n"
    )
    workdir = tempfile.mkdtemp(prefix="autoinfer-exec-")
    try:
        with open(os.path.join(workdir, "prog.py"), "w", encoding="utf-8") as f:
            f.write(full)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            timed_out, wall, report = _launch(workdir, limits, out, err)
            stdout, stderr = _tail(out), _tail(err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    status = report.get("status")
    returncode = os.waitstatus_to_exitcode(status) if isinstance(status, int) else None
    cpu = report.get("cpu")
    cpu_s = float(cpu) if isinstance(cpu, (int, float)) else None
    ran_to_end = f"\n{marker}\n" in stdout
    stdout = stdout.replace(f"\n{marker}\n", "")
    passed, reason = _verdict(timed_out, returncode, cpu_s, ran_to_end, stderr, limits)
    return ExecResult(
        passed=passed,
        reason=reason,
        wall_s=wall,
        guards=tuple(report.get("guards", ())),
        returncode=returncode,
        cpu_s=cpu_s,
        stdout_tail=stdout[-_TAIL:],
        stderr_tail=stderr[-_TAIL:],
    )


def run_programs(
    sources: Sequence[str], limits: ExecLimits = DEFAULT_LIMITS, workers: int | None = None
) -> list[ExecResult]:
    """run_program over many sources, `workers` at a time (default min(2, cores)), in order."""
    require_code_execution_allowed()
    n = workers or min(2, os.cpu_count() or 1)
    if n <= 1 or len(sources) <= 1:
        return [run_program(s, limits) for s in sources]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="autoinfer-exec") as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


# --- the parent side -------------------------------------------------------------------------


def _env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _interpreter() -> tuple[str, str]:
    """The base interpreter (not the virtual environment's wrapper) and its installation prefix."""
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return python, os.path.realpath(sys.base_prefix)


def _launch(workdir: str, limits: ExecLimits, out: Any, err: Any) -> tuple[bool, float, dict[str, Any]]:
    python, prefix = _interpreter()
    r, w = os.pipe()
    uid = limits.uid if limits.uid is not None else _RUN_UID_BASE + secrets.randbelow(1 << 24)
    spec = {"dir": workdir, "report_fd": w, "python": python, "prefix": prefix, "uid": uid, "limits": asdict(limits)}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "--confine", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=(w,),
            start_new_session=True,
            cwd=workdir,
            env=_env(workdir),
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    buf = b""
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        wall = time.monotonic() - start
        buf += _drain(r)
        _kill(proc, _merge(buf))
        buf += _drain(r)
        os.close(r)
    return timed_out, wall, _merge(buf)


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _merge(buf: bytes) -> dict[str, Any]:
    """The launcher's and the init process's report lines, as one dict (guards concatenated)."""
    report: dict[str, Any] = {"guards": []}
    for line in buf.decode(errors="replace").splitlines():
        try:
            part = json.loads(line)
        except ValueError:
            continue
        if isinstance(part, dict):
            report["guards"] += part.pop("guards", [])
            report.update(part)
    return report


def _kill(proc: subprocess.Popen[bytes], report: dict[str, Any]) -> None:
    """Kill what is left: the init process (its PID namespace with it), then the process group."""
    child = report.get("child_pid")
    if proc.poll() is None and isinstance(child, int) and "status" not in report:
        # The launcher is alive and has not reaped the init process, so the pid is still its.
        try:
            fd = os.pidfd_open(child)
        except OSError:
            pass
        else:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)
        # The launcher reaps it and exits (no zombie left behind); it gets a moment to.
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(f: Any) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * _TAIL))
    return str(f.read().decode("utf-8", errors="replace"))


def _verdict(
    timed_out: bool, code: int | None, cpu_s: float | None, ran_to_end: bool, stderr: str, limits: ExecLimits
) -> tuple[bool, str]:
    if timed_out:
        return False, "timeout"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if code is None:
        return False, f"error: confinement: {last[:200] or 'the launcher reported no exit status'}"
    if code == 0:
        return (True, "passed") if ran_to_end else (False, "error: the program exited before its tests ran")
    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s is not None and cpu_s >= limits.cpu_s):
            return False, "timeout"
        if sig == signal.SIGXFSZ:
            return False, "error: file size limit (SIGXFSZ)"
        return False, f"error: killed by {signal.Signals(sig).name}"
    if code == _CONFINE_FAILED and last.startswith("autoinfer-confine:"):
        return False, f"error: confinement: {last.removeprefix('autoinfer-confine:').strip()}"
    if last.startswith("AssertionError"):
        return False, "failed"
    return False, f"error: {last[:200]}" if last else f"error: exit code {code}"


# --- the launcher (this file run as a script) -------------------------------------------------


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _ok(rc: int) -> bool:
    return rc == 0


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> bool:
    enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
    return _ok(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _setattr(libc: ctypes.CDLL, path: str, flags: int, attr_set: int, attr_clr: int, propagation: int) -> bool:
    attr = _MountAttr(attr_set, attr_clr, propagation, 0)
    rc = libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_long(_AT_FDCWD),
        ctypes.c_char_p(path.encode()),
        ctypes.c_long(flags),
        ctypes.byref(attr),
        ctypes.c_long(ctypes.sizeof(attr)),
    )
    return bool(rc == 0)


def _read_only_root(libc: ctypes.CDLL) -> bool:
    """Every mount of this (new) namespace read-only, nosuid and private, recursively; /proc itself
    stays writable (a process writes its own /proc/self files, the nested uid map among them)."""
    if _setattr(libc, "/", _AT_RECURSIVE, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, _MS_PRIVATE):
        _setattr(libc, "/proc", 0, 0, _MOUNT_ATTR_RDONLY, 0)
        return True
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE, None)  # at least nothing propagates out
    return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_self(inner_uid: int, inner_gid: int, outer_uid: int, outer_gid: int) -> None:
    """Map this process (just unshared into a user namespace) to one uid and gid inside it."""
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inner_uid} {outer_uid} 1\n")
    _write("/proc/self/gid_map", f"{inner_gid} {outer_gid} 1\n")


def _blocked_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that others (the dropped uid) may not enter."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def _show_interpreter(libc: ctypes.CDLL, workdir: str, prefix: str) -> str | None:
    """Cover the directory that hides the interpreter from the dropped uid with a read-only tmpfs
    that shows only the interpreter's installation (bind-mounted, read-only). Returns that directory."""
    hidden = _blocked_ancestor(prefix)
    if hidden is None:
        return None
    stage = os.path.join(workdir, ".interpreter")
    os.mkdir(stage, 0o700)
    if not _mount(libc, prefix, stage, None, _MS_BIND | _MS_REC, None):
        return None
    if not _mount(libc, "tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755"):
        libc.umount2(stage.encode(), _MNT_DETACH)
        return None
    os.makedirs(prefix, 0o755, exist_ok=True)
    moved = _mount(libc, stage, prefix, None, _MS_MOVE, None)
    _mount(libc, None, hidden, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)
    if not moved:
        libc.umount2(stage.encode(), _MNT_DETACH)
    os.rmdir(stage)
    return hidden if moved else None


def _confine_main(spec: dict[str, Any]) -> int:
    workdir: str = spec["dir"]
    report: int = spec["report_fd"]
    lim = ExecLimits(**spec["limits"])
    run_uid: int = spec["uid"]
    libc = _libc()
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    guards: list[str] = []
    prog = os.path.join(workdir, "prog.py")
    with open(prog, "rb") as f:
        source = f.read()
    userns = False
    if not root and _ok(libc.unshare(_CLONE_NEWUSER)):
        _map_self(0, 0, uid, gid)
        userns = True
        guards.append("userns")
    if (root or userns) and _ok(libc.unshare(_CLONE_NEWNET)):
        guards.append("netns")
    if (root or userns) and _ok(libc.unshare(_CLONE_NEWNS)):
        guards.append("mountns")
        if _read_only_root(libc):
            guards.append("ro-root")
        owner = (run_uid, run_uid) if root else (0, 0)
        opts = f"size={lim.disk_bytes},mode=0700,uid={owner[0]},gid={owner[1]}"
        if _mount(libc, "tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, opts):
            guards.append(f"tmpfs:{lim.disk_bytes}")
            with open(prog, "wb") as f:
                f.write(source)
        if root:
            try:
                hidden = _show_interpreter(libc, workdir, spec["prefix"])
            except OSError:
                hidden = None  # the interpreter may then be out of the run's uid's reach: exec says so
            if hidden:
                guards.append(f"hide:{hidden}")
    if root and f"tmpfs:{lim.disk_bytes}" not in guards:
        os.chown(workdir, run_uid, run_uid)
        os.chown(prog, run_uid, run_uid)
        os.chmod(workdir, 0o700)
    if (root or userns) and _ok(libc.unshare(_CLONE_NEWPID)):
        guards.append("pidns")
    pid = os.fork()
    if pid == 0:
        _init_process(libc, spec, lim, root, userns, workdir, report)
    os.write(report, (json.dumps({"guards": guards, "child_pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    if status != 0:  # the init process failed to set up, or was killed: its status stands
        os.write(report, (json.dumps({"status": status}) + "\n").encode())
    return 0


def _limit(which: int, soft: int, hard: int) -> None:
    """Lower a resource limit (never above a hard limit already lower)."""
    _, cur = resource.getrlimit(which)
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(which, (soft, hard))


def _init_process(
    libc: ctypes.CDLL, spec: dict[str, Any], lim: ExecLimits, root: bool, userns: bool, workdir: str, report: int
) -> NoReturn:
    """The launcher's child (init of the PID namespace where one holds): limits, then no privilege,
    then it forks the program's process and waits for it, reaping whatever it orphans, and reports
    its exit status and CPU time. The program is not init itself, so its signals (SIGXCPU on the
    CPU limit) act as usual. Any failure to set up: exit 125, and nothing runs."""
    try:
        guards = ["rlimits"]
        _limit(resource.RLIMIT_CORE, 0, 0)
        _limit(resource.RLIMIT_AS, lim.address_space_bytes, lim.address_space_bytes)
        _limit(resource.RLIMIT_CPU, lim.cpu_s, lim.cpu_s + 1)
        _limit(resource.RLIMIT_FSIZE, lim.file_size_bytes, lim.file_size_bytes)
        _limit(resource.RLIMIT_NOFILE, lim.open_files, lim.open_files)
        _limit(resource.RLIMIT_NPROC, lim.processes, lim.processes)
        if root:
            os.setgroups([])
            run_uid: int = spec["uid"]
            os.setgid(run_uid)
            os.setuid(run_uid)
            if os.getuid() != run_uid or os.geteuid() != run_uid or os.getgid() != run_uid:
                raise OSError("could not drop to an unprivileged uid")
            guards.append(f"setuid:{run_uid}")
        elif userns:
            # A nested user namespace, as an unprivileged uid there: no capability over the mount
            # and network namespaces above, which belong to the outer one.
            if not _ok(libc.unshare(_CLONE_NEWUSER)):
                raise OSError(ctypes.get_errno(), "could not enter a nested user namespace")
            _map_self(_NOBODY, _NOBODY, 0, 0)
            guards.append(f"nested-userns:{_NOBODY}")
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change, which clears it
        os.chdir(workdir)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_DFL)  # the program starts with default dispositions
        program = os.fork()
        if program == 0:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.closerange(3, 1 << 16)
            python: str = spec["python"]
            os.execve(python, [python, "-I", "-B", "prog.py"], _env(workdir))
        os.write(report, (json.dumps({"guards": guards}) + "\n").encode())
        while True:
            pid, status, usage = os.wait4(-1, 0)
            if pid == program:
                break
        cpu = round(usage.ru_utime + usage.ru_stime, 3)
        os.write(report, (json.dumps({"status": status, "cpu": cpu}) + "\n").encode())
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - whatever failed, the program must not run
        os.write(2, f"autoinfer-confine: {type(e).__name__}: {e}\n".encode())
    os._exit(_CONFINE_FAILED)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--confine":
        sys.exit(_confine_main(json.loads(sys.argv[2])))
    sys.exit("usage: code_exec.py --confine SPEC (started by autoinfer, not by hand)")
