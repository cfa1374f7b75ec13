"""A load and abuse test of `autoinfer serve`: a real server process on the fake engine, on
loopback, bounded in requests and time. Concurrent clients mix good requests with over-long,
oversized, malformed and unauthenticated ones; a burst goes past the queue bound; clients leave
mid-stream. Every request must get an answer it deserves (200, 400, 401, 413 or 429, never a 500
or no answer), the server must stay healthy and lean, and nothing may outlive the test."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import yaml

from autoinfer.export.deploy import engine_config
from autoinfer.export.server import started_server
from tests.export.test_serve import MAX_TOKENS, MODEL, fake_engine
from tests.fake_engine import CONTEXT

KEY = "load-test-key"
CLIENTS = 6
LOAD_S = 5.0  # how long the mixed load runs (seconds)
MAX_BODY = 64 * 1024  # bytes
# What each kind of request may be answered with. A good request may meet a full queue.
ALLOWED = {
    "good": {200, 429},
    "good-stream": {200, 429},
    "over-long": {400},
    "past-context": {400},
    "oversized": {413},
    "malformed": {400},
    "no-key": {401},
}


def deployment(tmp: Path) -> Path:
    engine = fake_engine(tmp)
    data = {
        "model": {"source": MODEL},
        **engine.point.as_dict(),
        "generation": {"max_new_tokens": MAX_TOKENS, "ignore_eos": False, "do_sample": False},
        "runtime": {"serve": "autoinfer serve d.yaml", "engine_config": engine_config(engine.config)},
        "measured": {"trial": 0},
    }
    path = tmp / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def send(port: int, kind: str, i: int) -> int:
    """One request of `kind` on a connection of its own; its HTTP status."""
    url = f"http://127.0.0.1:{port}/v1/completions"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body: dict[str, object] = {"model": MODEL, "prompt": [1 + (i + j) % 60 for j in range(6)], "max_tokens": 8}
    content: bytes | None = None
    if kind == "good-stream":
        body["stream"] = True
    elif kind == "over-long":
        body["prompt"] = [5] * (CONTEXT + 1)
    elif kind == "past-context":
        body["max_tokens"] = CONTEXT
    elif kind == "oversized":
        content = json.dumps({"model": MODEL, "prompt": "x" * (MAX_BODY + 16 * 1024)}).encode()
    elif kind == "malformed":
        content = [b'{"model": "fake-model", "prompt": ', b'{"prompt": 5}', b"\xff\xfe"][i % 3]
    elif kind == "no-key":
        headers.pop("Authorization")
    elif kind == "long":  # 200 passes of the fake engine (~0.8 s a batch): a burst outruns the queue
        body.update(max_tokens=200, ignore_eos=True)
    with httpx.Client(timeout=60) as client:
        if content is not None:
            r = client.post(url, content=content, headers=headers)
        else:
            with client.stream("POST", url, json=body, headers=headers) as r:
                r.read()  # a stream to its end ([DONE])
        return r.status_code


def mixed_load(port: int) -> Counter[tuple[str, int]]:
    """CLIENTS clients, each cycling through every kind of request until LOAD_S has passed."""
    kinds = list(ALLOWED)
    deadline = time.monotonic() + LOAD_S

    def client(c: int) -> Counter[tuple[str, int]]:
        seen: Counter[tuple[str, int]] = Counter()
        i = c
        while time.monotonic() < deadline:
            kind = kinds[i % len(kinds)]
            seen[(kind, send(port, kind, i))] += 1
            i += 1
        return seen

    with ThreadPoolExecutor(CLIENTS) as pool:
        return sum(pool.map(client, range(CLIENTS)), Counter())


def burst(port: int, n: int = 24) -> Counter[int]:
    """n long requests released at once: far more than the batch (2) and the queue (4) hold while
    each batch takes ~0.8 s (all n admitted would take them ~7 s to arrive)."""
    gate = threading.Barrier(n)

    def one(i: int) -> int:
        gate.wait(30)
        return send(port, "long", i)

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def leave_mid_stream(port: int) -> None:
    """A streamed request whose client reads the head of the answer and hangs up."""
    body = json.dumps({"model": MODEL, "prompt": [7, 8, 9], "max_tokens": 32, "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        assert s.recv(12).startswith(b"HTTP/1.1 200")


def test_the_server_answers_load_and_abuse_and_leaves_nothing(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "autoinfer", "serve", str(deployment(tmp_path)), "--max-queue", "4",
            "--max-body-bytes", str(MAX_BODY), "--max-tokens-limit", str(CONTEXT)]  # fmt: skip
    log = tmp_path / "serve.log"
    with started_server(argv, log, tmp_path, 120, env={"AUTOINFER_API_KEY": KEY}) as started:
        port, server = started.port, psutil.Process(started.pid)
        family = [server, *server.children(recursive=True)]
        for i in range(10):  # warm: imports, allocator pools, the first batches
            assert send(port, "good", i) == 200
        rss_before = server.memory_info().rss
        seen = mixed_load(port)
        bursts = burst(port)
        for _ in range(3):
            leave_mid_stream(port)
        assert send(port, "good-stream", 0) == 200 and send(port, "good", 1) == 200  # still serving
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        rss_after = server.memory_info().rss
    wrong = {k: n for k, n in seen.items() if k[1] not in ALLOWED[k[0]]}
    assert not wrong, f"unexpected answers (kind, status): count {wrong}; log: {log.read_text()[-2000:]}"
    assert {kind for kind, _ in seen} == set(ALLOWED)  # every kind was sent
    assert set(bursts) <= {200, 429} and bursts[429] > 0 and bursts[200] >= 2, bursts
    assert rss_after <= 1.5 * rss_before, f"RSS grew from {rss_before} to {rss_after} bytes"
    time.sleep(0.2)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"
    assert "Traceback" not in log.read_text()
