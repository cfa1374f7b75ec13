"""A minimal streaming OpenAI-style server on 127.0.0.1, in a thread, for the load generator's tests.

It answers /v1/completions and /v1/chat/completions as servers that stream one token per chunk
do: `max_tokens` (or `max_completion_tokens`) chunks "t0 ", "t1 ", ... `delay_s` apart, then a
usage chunk (prompt tokens: the prompt's words) and [DONE]. It keeps every request's path,
headers and body, so tests can see what the generator sent, and answers 401 without the right
`Authorization: Bearer KEY` when a key is set. Every other route is a 404 (the generator polls
/metrics). Not a model: a fixed, fast stand-in with known token counts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """What the stub was sent, in arrival order."""

    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [r for r in self.requests if r[0].startswith("/v1/")]


def _prompt_words(body: dict[str, Any]) -> int:
    if "messages" in body:
        texts = []
        for m in body["messages"]:
            content = m["content"]
            texts += [content] if isinstance(content, str) else [p["text"] for p in content]
        return sum(len(t.split()) for t in texts)
    return len(str(body["prompt"]).split())


def _handler(seen: Seen, api_key: str | None, delay_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with seen.lock:
                seen.requests.append((self.path, dict(self.headers), {}))
            self._reply(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with seen.lock:
                seen.requests.append((self.path, dict(self.headers), body))
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                self._reply(401, b'{"error": {"message": "bad key"}}')
                return
            chat = self.path == "/v1/chat/completions"
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._reply(404, b"{}")
                return
            n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for i in range(n):
                time.sleep(delay_s)
                piece = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                self._event({"choices": [{"index": 0, **piece, "finish_reason": "length" if i == n - 1 else None}]})
            prompt = _prompt_words(body)
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            self._event({"choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, data: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left: expected here
            super().handle_error(request, client_address)


@contextmanager
def openai_stub(api_key: str | None = None, delay_s: float = 0.002) -> Iterator[tuple[str, Seen]]:
    """The stub on a free loopback port; yields its root URL and what it is sent. Stopped on exit."""
    seen = Seen()
    server = _Server(("127.0.0.1", 0), _handler(seen, api_key, delay_s))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
