"""`autoinfer serve deploy.yaml`: an OpenAI-compatible server on the very engine a trial measured.

For configurations no stock server reproduces (transformers with torchao or optimum-quanto weights,
prompt lookup, early exit), the engine code that was measured serves requests itself: it loads the
configuration exactly as the trial did and batches up to `batch_size` concurrent requests into one
`generate_ids` call, as the trial's batches were. The HTTP side (FastAPI on uvicorn, the OpenAI
routes) is `autoinfer.export.openai_app`, the batching `autoinfer.export.batcher`; this module loads
the engine and starts the server.

Safe by default, as a server people trust is: it listens on 127.0.0.1 unless given a host, asks for
an API key when one is set (`--api-key` or AUTOINFER_API_KEY: 401 without it; /health stays open),
refuses a prompt past the model's context and `max_tokens` past its limit (400), a full queue (429
with Retry-After) and a body past its size limit (413), and reports a stopped batcher on /health
(503).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from autoinfer.engines.base import Engine, TrialPoint
from autoinfer.errors import ConfigError
from autoinfer.export.batcher import Limits, Served


def load_engine(path: Path) -> tuple[Engine, dict[str, Any]]:
    """The engine of a deployment config, loaded in its measured configuration."""
    from autoinfer.engines import ENGINES
    from autoinfer.trial import set_threads

    data, cfg, point = _deployment(path)
    threads = set_threads(point)
    if point.engine == "transformers":
        import torch

        torch.set_num_threads(threads)
    engine = ENGINES.get(point.engine).load_class()(cfg, point)
    engine.load()
    return engine, data


def _deployment(path: Path) -> tuple[dict[str, Any], Any, TrialPoint]:
    """The deployment's data, the study settings its engine reads, and its point; a file that is
    not a servable deployment is one ConfigError (exit 2), never a traceback."""
    import pydantic
    import yaml

    from autoinfer.config import Config

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("", f"cannot read the deployment config: {e}", str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("", "not a deployment config (write one with autoinfer export)", str(path))
    runtime = data.get("runtime") or {}
    cfg = runtime.get("engine_config")
    if not cfg:
        serve = runtime.get("serve")
        if serve and not str(serve).startswith("autoinfer serve"):  # llama.cpp, vLLM: their own server
            raise ConfigError("runtime.serve", f"this trial is served by its own server: {serve}", str(path))
        raise ConfigError("runtime.engine_config", "missing: export this trial again with this autoinfer", str(path))
    try:
        point = TrialPoint(**{k: data[k] for k in ("engine", "quantization", "draft", "batch_size", "hardware")},
                           draft_tokens=int(data.get("draft_tokens") or 0),
                           compile_mode=str(data.get("compile_mode") or ""))  # fmt: skip
        return data, Config.model_validate(cfg), point
    except KeyError as e:
        raise ConfigError(str(e.args[0]), "missing", str(path)) from None
    except (pydantic.ValidationError, TypeError, ValueError) as e:
        raise ConfigError("runtime.engine_config", f"invalid: {str(e).splitlines()[0]}", str(path)) from None


def serve(
    path: Path,
    host: str,
    port: int,
    model_name: str | None = None,
    ready: threading.Event | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
) -> None:
    """Load the deployment's engine, then serve it until interrupted (health is 200 from the start:
    nothing listens before the engine is loaded). `limits.context` is filled from the engine."""
    import dataclasses

    import uvicorn

    from autoinfer.export.openai_app import create_app

    engine, data = load_engine(path)
    name = model_name or str(data["model"].get("source"))
    max_tokens = int((data.get("generation") or {}).get("max_new_tokens") or 16)
    limits = dataclasses.replace(limits or Limits(), context=engine.context_tokens())
    app = create_app(Served(engine, name, max_tokens, limits=limits), api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none",
                            timeout_graceful_shutdown=5)  # fmt: skip
    guard = "an API key required" if api_key else "no API key"
    print(f"serving {engine.point.label()} as {name!r} on http://{host}:{port}/v1 ({guard})", flush=True)
    if ready is not None:
        ready.set()
    uvicorn.Server(config).run()
