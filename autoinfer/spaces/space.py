"""How a trial samples the space: conditional dimensions, and no impossible combination.

Order: engine -> hardware -> quantization (what that engine runs on that hardware) -> compile mode
(only for engines that compile) -> batch size -> draft (only where the engine can draft at that
batch size) -> draft_tokens (only for drafts that run a model) -> load (served trials only). A
dimension whose choices depend on earlier ones gets its own Optuna parameter name per condition
(e.g. `quantization@transformers/cpu`), because Optuna distributions must not change under one name.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Protocol

from autoinfer.registry import ENGINES
from autoinfer.spaces.dimensions import DraftSpec, HardwareSpec
from autoinfer.spaces.point import TrialPoint

if TYPE_CHECKING:
    from autoinfer.config import Config
    from autoinfer.engines import EngineSpec


def _engine(name: str) -> EngineSpec:
    return ENGINES.get(name)


class Suggester(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


class NoValidPoint(ValueError):
    """The sampled prefix (engine, hardware) leaves no quantization to run."""


def _pick(trial: Suggester, name: str, choices: list[Any], full: list[Any], condition: str) -> Any:
    if len(choices) == 1 and len(full) == 1:
        return choices[0]  # a fixed dimension is not a parameter
    pname = name if choices == full else f"{name}@{condition}"
    return trial.suggest_categorical(pname, choices)


def quantizations_for(config: Config, engine: str, hardware: str) -> list[str]:
    ok = _engine(engine).quantizations_for(HardwareSpec.parse(hardware))
    return [q for q in config.space.quantization if q in ok]


def drafts_for(config: Config, engine: str, batch_size: int) -> list[str]:
    spec = _engine(engine)
    if batch_size > spec.draft_max_batch:
        return ["none"]
    return [d for d in config.space.draft if spec.runs_draft(DraftSpec.parse(d))]


def hardware_for(config: Config, engine: str) -> list[str]:
    """The targets of the space the engine is built for. This is the hardware parameter's set of
    choices, so it must not depend on the machine: workers on several machines share one study."""
    kinds = _engine(engine).hardware_kinds
    return [h for h in config.space.hardware if HardwareSpec.parse(h).kind in kinds]


def owned_hardware(config: Config, engine: str) -> list[str]:
    """The targets this worker measures with this engine: its own (search.hardware, else all of
    the space's) that the engine, as installed here, can run on."""
    kinds, _ = _engine(engine).hardware_here()
    mine = config.search.hardware or config.space.hardware
    return [h for h in hardware_for(config, engine) if h in mine and HardwareSpec.parse(h).kind in kinds]


def sample_point(trial: Suggester, config: Config) -> TrialPoint:
    s = config.space
    engine = _pick(trial, "engine", s.engine, s.engine, "")
    hws = hardware_for(config, engine)
    if not hws:
        raise NoValidPoint(f"engine {engine} runs on none of {s.hardware}")
    hardware = _pick(trial, "hardware", hws, s.hardware, engine)
    if hardware not in owned_hardware(config, engine):
        raise NoValidPoint(f"engine {engine} on {hardware} is not measured by this worker")
    quants = quantizations_for(config, engine, hardware)
    if not quants:
        raise NoValidPoint(f"engine {engine} on {hardware} runs none of {s.quantization}")
    quant = _pick(trial, "quantization", quants, s.quantization, f"{engine}/{HardwareSpec.parse(hardware).kind}")
    modes = [m for m in s.compile_mode if m in _engine(engine).compile_modes]
    mode = str(_pick(trial, "compile_mode", modes, s.compile_mode, engine)) if modes else ""
    batch = _pick(trial, "batch_size", s.batch_size, s.batch_size, "")
    drafts = drafts_for(config, engine, batch)
    if drafts == ["none"] and "none" in s.draft:
        draft = "none"  # drafting does not apply here: not sampled
    elif not drafts:
        raise NoValidPoint(f"engine {engine} supports none of the drafts {s.draft}")
    else:
        draft = _pick(trial, "draft", drafts, s.draft, engine)
    spec = DraftSpec.parse(draft)
    if spec.reads_weights:  # a model drafts: how many tokens per step is searched too
        tokens = int(_pick(trial, "draft_tokens", s.draft_tokens, s.draft_tokens, ""))
    else:
        tokens = spec.n if spec.kind == "prompt_lookup" else 0
    served = config.workload.served
    knobs = _knobs(trial, engine, served.server_knobs.get(engine, {})) if served is not None else ""
    loads = served.loads() if served is not None else []
    load = str(_pick(trial, "load", loads, loads, "")) if loads else ""  # last: one server, many loads
    return TrialPoint(engine, quant, draft, int(batch), hardware, tokens, mode, load, knobs)


def _knobs(trial: Suggester, engine: str, listed: dict[str, list[Any]]) -> str:
    """The engine's server knobs (served trials), each a parameter named by its engine."""
    from autoinfer.served.knobs import encode

    return encode({k: _pick(trial, knob_param(engine, k), v, v, "") for k, v in sorted(listed.items())})


def knob_param(engine: str, knob: str) -> str:
    return f"server.{engine}.{knob}"


class _Recorder:
    """A Suggester that replays fixed choices, used to enumerate the valid points."""

    def __init__(self, choose: dict[str, Any]) -> None:
        self.choose = choose
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        base = name.split("@")[0]
        value = self.choose[base]
        if value not in choices:
            raise NoValidPoint(name)
        self.params[name] = value
        return value


def enumerate_points(config: Config) -> list[tuple[dict[str, Any], TrialPoint]]:
    """Every valid point this worker measures, with the Optuna params that select it (for grid
    search and checks)."""
    s = config.space
    seen: set[TrialPoint] = set()
    out = []
    # The load varies fastest, so a grid measures every load point of one server in a row.
    served = config.workload.served
    listed = served.server_knobs if served is not None else {}
    # every engine's knobs: a point reads only its own engine's
    knobs = {knob_param(e, k): v for e, ks in listed.items() for k, v in ks.items()}
    dims = ("engine", "hardware", "quantization", "compile_mode", "batch_size", "draft", "draft_tokens",
            *knobs, "load")  # fmt: skip
    loads = served.loads() if served is not None else [""]
    grid: list[list[Any]] = [s.engine, s.hardware, s.quantization, s.compile_mode, s.batch_size, s.draft,
                             s.draft_tokens, *knobs.values(), loads]  # fmt: skip
    for values in itertools.product(*grid):
        rec = _Recorder(dict(zip(dims, values, strict=True)))
        try:
            point = sample_point(rec, config)
        except NoValidPoint:
            continue
        if point not in seen:  # choices a point does not use (a draft at batch 8, a compile mode) repeat it
            seen.add(point)
            out.append((rec.params, point))
    return out
