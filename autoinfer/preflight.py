"""Checks that need the disk or the hardware, run before a study starts (and by `validate`)."""

from __future__ import annotations

import importlib.util

from autoinfer.config import Config
from autoinfer.errors import ConfigError
from autoinfer.hardware import target_problem
from autoinfer.spaces import HardwareSpec, enumerate_points
from autoinfer.spaces.dimensions import DraftSpec


def check(config: Config, source: str | None = None) -> int:
    """Raise ConfigError for the first problem; return the number of valid points in the space."""
    for i, h in enumerate(config.space.hardware):
        problem = target_problem(HardwareSpec.parse(h))
        if problem:
            raise ConfigError(f"space.hardware[{i}]", problem, source)
    from autoinfer.engines import ENGINES

    for i, name in enumerate(config.space.engine):
        engine = ENGINES.get(name)
        if importlib.util.find_spec(engine.package) is None:
            raise ConfigError(
                f"space.engine[{i}]", f"{name} needs the {engine.package!r} package: {engine.install_hint}", source
            )
    m = config.model
    if "llama.cpp" in config.space.engine and not m.gguf_file:
        from autoinfer.engines.gguf_convert import converter_script
        from autoinfer.errors import TrialError

        try:
            converter_script()  # an HF checkpoint reaches llama.cpp through its converter
        except TrialError as e:
            raise ConfigError("model.source", str(e), source) from None
    if m.source.startswith("package:"):
        name = m.source.removeprefix("package:")
        if importlib.util.find_spec(name) is None:
            raise ConfigError("model.source", f"package {name!r} is not installed", source)
    elif m.gguf_file and not config.resolve(m.source).exists():
        raise ConfigError(
            "model.source", f"{config.resolve(m.source)} does not exist (gguf_file needs a local dir)", source
        )
    for i, d in enumerate(config.space.draft):
        spec = DraftSpec.parse(d)
        if (
            spec.kind == "model"
            and spec.model.startswith(("./", "../", "/"))
            and not config.resolve(spec.model).exists()
        ):
            raise ConfigError(
                f"space.draft[{i}]", f"draft model path {config.resolve(spec.model)} does not exist", source
            )
    for i, t in enumerate(config.accuracy.tasks):
        for split, path in (t.data_files or {}).items():
            if not config.resolve(path).is_file():
                raise ConfigError(
                    f"accuracy.tasks[{i}].data_files.{split}", f"{config.resolve(path)} does not exist", source
                )
    p = config.workload.prompts
    if not p.startswith("builtin:") and not config.resolve(p).is_file():
        raise ConfigError("workload.prompts", f"{config.resolve(p)} does not exist", source)
    if p.startswith("builtin:") and p != "builtin:chat":
        raise ConfigError("workload.prompts", f"unknown built-in prompt set {p!r} (known: builtin:chat)", source)
    n = len(enumerate_points(config))
    if n == 0:
        raise ConfigError("space", "no combination of engine, hardware, quantization and draft can run", source)
    return n
