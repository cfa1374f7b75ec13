"""The server a served trial measures: exactly what `autoinfer export` would ship for the point.

One function builds every server command, `autoinfer.export.runtime.runtime_block` (the engine's
export recipe over what the loaded engine recorded); export writes it into a deployment config,
verify runs it from there, and a served trial runs it from a deployment config of its own written
here (`autoinfer serve` reads its engine settings from that file; llama-server and vLLM take
everything on the command line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoinfer.config import Config
from autoinfer.engines.base import TrialPoint


@dataclass(frozen=True)
class ServerCommand:
    argv: list[str]  # as verify runs it: loopback host and a free port are set when it starts
    key_env: str | None  # the environment variable the server reads its API key from
    model: str  # the model id requests name
    streams_tokens: bool  # False: a streamed answer arrives whole (TTFT = latency, no TPOT)
    deployment: Path  # the deployment config written for it
    line: str  # the exported command line, as a user would run it


def server_command(config: Config, point: TrialPoint, info: dict[str, Any], folder: Path) -> ServerCommand:
    """The exported server of `point`, whose loaded engine recorded `info`, with its deployment
    config written to `folder/deploy.yaml`."""
    from autoinfer.export.deploy import engine_config
    from autoinfer.export.runtime import runtime_block
    from autoinfer.export.verify import server_argv

    model = {k: v for k, v in config.model.model_dump().items() if v is not None}
    runtime = runtime_block(model, point.as_dict(), info, engine_config(config))
    if "serve" not in runtime:
        raise ValueError(f"the {point.engine} engine exports no server for this point: {runtime.get('note', '')}")
    data = {
        "model": model,
        **point.as_dict(),
        "generation": {"max_new_tokens": config.workload.max_new_tokens, "ignore_eos": True, "do_sample": False},
        "runtime": runtime,
    }
    # Plain data: the engine's own record may hold str subclasses (torch's TorchVersion) that YAML
    # refuses, as they reach an export only after a round trip through the study's JSON storage.
    data = json.loads(json.dumps(data, default=str))
    path = folder / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return ServerCommand(
        argv=server_argv(runtime, str(path)),
        key_env=runtime.get("api_key_env"),
        model=str(model.get("source") or runtime.get("checkpoint")),
        streams_tokens=bool(runtime.get("streams_tokens")),
        deployment=path,
        line=str(runtime["serve"]),
    )
