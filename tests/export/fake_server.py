"""A stand-in for llama-server in verify tests: the OpenAI `/v1/completions` route, streamed.

It answers each token-id prompt with the text a trial recorded for it (`--outputs`, the file
`autoinfer export` writes), one word per chunk, so `autoinfer verify` can be tested without a
model. `--wrong N` changes prompt N's answer; `--pidfile` says where it runs; `--crash` exits
before it is healthy; `--delay S` waits S seconds before each chunk, which caps its tokens/s at
one per S per request in flight however fast the machine (how tests set its speed without timing).
Asked for `return_token_ids` (as verify asks vLLM), it streams the recorded output ids too;
`--wrong-token N` changes prompt N's last id and not its text. `--child-pidfile` starts a child
process, as vLLM's server starts its EngineCore, which it stops on SIGTERM (as vLLM's does) unless
`--orphan`: then only a kill of the whole process group stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--wrong", type=int, default=-1)
    ap.add_argument("--pidfile")
    ap.add_argument("--crash", action="store_true")
    ap.add_argument("--delay", type=float, default=0.001, help="seconds between chunks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--wrong-token", type=int, default=-1)
    ap.add_argument("--child-pidfile")
    ap.add_argument("--orphan", action="store_true", help="leave the child running on SIGTERM")
    args = ap.parse_args()
    if args.child_pidfile:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(args.child_pidfile, "w") as f:
            f.write(str(child.pid))
        if not args.orphan:

            def stop(*_: object) -> None:
                # Once only: as a SIGKILLed verify's threads exit one by one, the kernel hands
                # this process to the next and sends the parent-death signal again (seen: a second
                # SIGTERM inside a slow handler), and a handler re-entered inside child.wait()
                # deadlocks on Popen's wait lock (it did here, about one run in two).
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                child.kill()
                child.wait()
                os._exit(0)

            signal.signal(signal.SIGTERM, stop)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    if args.crash:
        print("error: failed to load model", file=sys.stderr)
        sys.exit(1)
    gen = json.load(open(args.outputs))
    answers = {tuple(p): t for p, t in zip(gen["prompt_ids"], gen["texts"], strict=True)}
    if args.wrong >= 0:
        answers[tuple(gen["prompt_ids"][args.wrong])] += " and more"
    ids = {tuple(p): list(o) for p, o in zip(gen["prompt_ids"], gen["output_ids"], strict=True)}
    if args.wrong_token >= 0:
        ids[tuple(gen["prompt_ids"][args.wrong_token])][-1] += 1

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, b'{"status":"ok"}')
            elif self.path == "/props":
                self._send(200, b'{"build_info":"fake-server"}')
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = answers.get(tuple(body["prompt"]), "unknown prompt")
            words = text.split(" ")
            chunks = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            out = ids.get(tuple(body["prompt"]), [])
            for i, c in enumerate(chunks):
                time.sleep(args.delay)
                choice: dict[str, object] = {"text": c, "index": 0}
                if body.get("return_token_ids"):  # all but the last id with the first word, as a server may
                    last = i == len(chunks) - 1
                    choice["token_ids"] = (out[:-1] if i == 0 else []) + (out[-1:] if last else [])
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            final = {"choices": [{"text": "", "finish_reason": "stop"}], "usage": {"completion_tokens": len(chunks)}}
            self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
