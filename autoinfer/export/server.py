"""The server `autoinfer verify` (and the serve tests) start: on a free loopback port, as a process
group of its own that dies with this process, and stopped with every process it started. Whatever
host the command names, this one listens on 127.0.0.1: a check is never exposed."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoinfer.errors import VerifyFailed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with `flag value` set once: an existing value replaced, else appended."""
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, flag, value]


def auth(api_key: str | None) -> dict[str, str]:
    """The request header that carries an API key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def http_get(port: int, path: str, timeout: float = 5.0, api_key: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=auth(api_key))
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return lines[-1].strip() if lines else "(no output)"


@dataclass(frozen=True)
class Server:
    """A started server: the loopback port it listens on and the pid of its process (the leader of
    its own process group, so its tree is what it started)."""

    port: int
    pid: int


@contextmanager
def running_server(
    argv: list[str], log: Path, cwd: Path, startup_s: float, env: Mapping[str, str] | None = None
) -> Iterator[int]:
    """Start `argv` (a server command) on a free loopback port, with `env` added to this process's
    environment (where an API key travels: never in argv, which `ps` shows); yield the port once
    healthy."""
    with started_server(argv, log, cwd, startup_s, env) as server:
        yield server.port


@contextmanager
def started_server(
    argv: list[str],
    log: Path,
    cwd: Path,
    startup_s: float,
    env: Mapping[str, str] | None = None,
    trap_sigterm: bool = True,
) -> Iterator[Server]:
    """`running_server`, yielding the server's pid with its port (served trials bill its tree).
    `trap_sigterm=False` leaves SIGTERM to the caller, whose own clean-up must then stop the server
    (a search worker keeping a server across trials)."""
    from autoinfer.search.isolation import die_with_parent

    port = free_port()
    me = os.getpid()
    with open(log, "wb") as out:
        # A session (and process group) of its own, so stopping it reaches the processes it starts
        # (vLLM's EngineCore and Worker); SIGTERM, not SIGKILL, if this process dies: a SIGKILLed
        # vLLM server cannot stop them, and nothing else would. The signal can come more than once
        # (again as each of this process's threads exits and the server passes to the next).
        proc = subprocess.Popen(
            with_option(with_option(argv, "--host", "127.0.0.1"), "--port", str(port)),
            env={**os.environ, **env} if env else None, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: die_with_parent(me, signal.SIGTERM),
        )  # fmt: skip
    # SIGTERM to us must also stop the server: turn it into an exception so `finally` runs.
    main = trap_sigterm and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_exit) if main else None
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise VerifyFailed(f"the server exited with status {proc.returncode}: {_last_line(log)}")
            try:
                if http_get(port, "/health", 2.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise VerifyFailed(f"the server was not healthy within {startup_s:.0f} s: {_last_line(log)}")
            time.sleep(0.2)
        yield Server(port, proc.pid)
    finally:
        stop_group(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that is no longer ours: the group is still there
        return True
    return True


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0, children_s: float = 8.0) -> None:
    """Stop a server started as its own process group, and every process it started.

    SIGTERM to the server first: it stops its own children (vLLM's server SIGTERMs its EngineCore
    and force-kills it after 5 s, within `children_s`), and they clean up what they hold. Whatever
    of the group outlives that (or a server that did not stop in `grace_s`) is SIGKILLed.
    """
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + children_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group is gone


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
