"""`autoinfer serve deploy.yaml`: an OpenAI-compatible server on the very engine a trial measured.

For configurations no stock server reproduces (transformers with torchao or optimum-quanto weights,
prompt lookup, early exit), the engine code that was measured serves requests itself: it loads the
configuration exactly as the trial did and batches up to `batch_size` concurrent requests into one
`generate` call, as the trial's batches were. Routes: `GET /health` (200 once loaded), `GET /props`,
`POST /v1/completions` with a text or token-id prompt, greedy only, optionally streamed. A batch's
outputs come out when the batch finishes, so a streamed reply arrives as one chunk: its time to
first token is its latency.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from autoinfer.engines.base import Engine, TrialPoint
from autoinfer.errors import ConfigError

BATCH_WINDOW_S = 0.05  # how long the first request of a batch waits for companions


@dataclass
class Request:
    ids: list[int]
    max_tokens: int
    ignore_eos: bool
    done: Future[tuple[str, int]] = field(default_factory=Future)


def load_engine(path: Path) -> tuple[Engine, dict[str, Any]]:
    """The engine of a deployment config, loaded in its measured configuration."""
    import yaml

    from autoinfer.config import Config
    from autoinfer.engines import ENGINES
    from autoinfer.trial import set_threads

    data = yaml.safe_load(path.read_text())
    cfg = (data.get("runtime") or {}).get("engine_config")
    if not cfg:
        raise ConfigError("runtime.engine_config", "missing: export this trial again with this autoinfer", str(path))
    point = TrialPoint(**{k: data[k] for k in ("engine", "quantization", "draft", "batch_size", "hardware")},
                       draft_tokens=int(data.get("draft_tokens") or 0))  # fmt: skip
    threads = set_threads(point)
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(threads)
    engine = ENGINES.get(point.engine).load_class()(Config.model_validate(cfg), point)
    engine.load()
    return engine, data


def _batches(engine: Engine, inbox: queue.Queue[Request]) -> None:
    """Gather up to batch_size requests (waiting BATCH_WINDOW_S for the first's companions) and
    generate them together."""
    b = engine.point.batch_size
    while True:
        batch = [inbox.get()]
        deadline = time.monotonic() + BATCH_WINDOW_S
        while len(batch) < b:
            try:
                batch.append(inbox.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        # One generate call per setting; a mixed batch (rare) is split by it.
        groups: dict[tuple[int, bool], list[Request]] = {}
        for r in batch:
            groups.setdefault((r.max_tokens, r.ignore_eos), []).append(r)
        for (max_tokens, ignore_eos), rs in groups.items():
            try:
                g = engine.generate_ids([r.ids for r in rs], max_tokens, ignore_eos)
                for r, ids in zip(rs, g.token_ids, strict=True):
                    r.done.set_result((engine.text(ids), len(ids)))
            except Exception as e:  # noqa: BLE001 - the client gets the error, the server keeps serving
                for r in rs:
                    r.done.set_exception(e)


def handler(engine: Engine, inbox: queue.Queue[Request], model: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/props":
                self._json(200, {"build_info": f"autoinfer serve ({engine.point.label()})"})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt = body["prompt"]
                ids = [int(t) for t in prompt] if isinstance(prompt, list) else engine.prompt_ids(str(prompt))
                if float(body.get("temperature", 0.0)) > 0:
                    raise ValueError("only greedy decoding (temperature 0) is served, as it was measured")
                req = Request(ids, int(body.get("max_tokens", 16)), bool(body.get("ignore_eos", False)))
            except (ValueError, KeyError, TypeError) as e:
                self._json(400, {"error": {"message": str(e)}})
                return
            inbox.put(req)
            try:
                text, n = req.done.result()
            except Exception as e:  # noqa: BLE001
                self._json(500, {"error": {"message": str(e)}})
                return
            head = {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "model": model,
                    "created": int(time.time())}  # fmt: skip
            finish = "length" if n >= req.max_tokens else "stop"
            usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
            if not body.get("stream"):
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                self._json(200, {**head, "choices": [choice], "usage": usage})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            chunks = [
                {**head, "choices": [{"text": text, "index": 0, "finish_reason": None}]},
                {**head, "choices": [{"text": "", "index": 0, "finish_reason": finish}], "usage": usage},
            ]
            for c in chunks:
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def serve(path: Path, host: str, port: int, ready: threading.Event | None = None) -> None:
    engine, data = load_engine(path)
    inbox: queue.Queue[Request] = queue.Queue()
    threading.Thread(target=_batches, args=(engine, inbox), daemon=True, name="batcher").start()
    server = ThreadingHTTPServer((host, port), handler(engine, inbox, str(data["model"].get("source"))))
    server.daemon_threads = True
    print(f"serving {engine.point.label()} on http://{host}:{port}/v1/completions", flush=True)
    if ready is not None:
        ready.set()
    server.serve_forever()
