"""The engine interface: load one configuration, generate with timings, expose lm-eval, close.

An engine module registers an `EngineSpec` (what it supports, importable without torch) and the
`Engine` class that does the work (imported only inside the trial's child process).
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoinfer.registry import Registry
from autoinfer.spaces.dimensions import DraftSpec, HardwareSpec

if TYPE_CHECKING:
    from autoinfer.config import Config


@dataclass(frozen=True)
class TrialPoint:
    """One fully specified configuration: what a trial loads and measures."""

    engine: str
    quantization: str
    draft: str
    batch_size: int
    hardware: str

    @property
    def draft_spec(self) -> DraftSpec:
        return DraftSpec.parse(self.draft)

    @property
    def hardware_spec(self) -> HardwareSpec:
        return HardwareSpec.parse(self.hardware)

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "quantization": self.quantization,
            "draft": self.draft,
            "batch_size": self.batch_size,
            "hardware": self.hardware,
        }


@dataclass(frozen=True)
class EngineSpec:
    """What an engine can do; the search space consults this before sampling."""

    name: str
    module: str  # import path of the module defining the Engine subclass `ENGINE`
    quantizations: tuple[str, ...]
    draft_kinds: tuple[str, ...]
    hardware_kinds: tuple[str, ...]
    # Largest batch that a drafted (speculative) generation accepts; 1 for HF assisted generation.
    draft_max_batch: int = 1
    # What a `model:<X>` draft must be for this engine: "hf" checkpoints or "gguf" files/levels.
    draft_model_format: str = "hf"
    # Quantizations the engine cannot run on a hardware kind, e.g. {"cpu": ("fp16",)}.
    unsupported: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The Python package the engine imports, and how to get it (checked before a study starts).
    package: str = "torch"
    install_hint: str = "pip install autoinfer"

    def quantizations_for(self, hardware: HardwareSpec) -> tuple[str, ...]:
        bad = self.unsupported.get(hardware.kind, ())
        return tuple(q for q in self.quantizations if q not in bad)

    def runs_draft(self, draft: DraftSpec) -> bool:
        if draft.kind not in self.draft_kinds:
            return False
        return draft.kind != "model" or draft.model_format == self.draft_model_format

    def load_class(self) -> type[Engine]:
        cls: type[Engine] = importlib.import_module(self.module).ENGINE
        return cls


ENGINES: Registry[EngineSpec] = Registry("engine")


@dataclass(frozen=True)
class GenerationResult:
    """One batched generate call, timed from the moment the prompts are handed to the engine."""

    new_tokens: tuple[int, ...]  # tokens actually produced per sequence (up to and incl. EOS)
    ttft_s: float  # time to the first generated token of the batch
    latency_s: tuple[float, ...]  # per sequence: start -> its last token
    total_s: float  # wall time of the whole call
    draft_proposed: int = 0  # draft tokens proposed (speculative decoding only)
    draft_accepted: int = 0  # of which the target model accepted
    token_ids: tuple[tuple[int, ...], ...] = ()  # the generated tokens per sequence (for checks)


class Engine(abc.ABC):
    """A loaded model in one configuration. Subclasses are instantiated in the trial process."""

    def __init__(self, config: Config, point: TrialPoint) -> None:
        self.config = config
        self.point = point
        self.info: dict[str, Any] = {}  # facts worth logging (backend used, source dtype, ...)

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights in the trial's quantization onto its hardware."""

    @abc.abstractmethod
    def generate(self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False) -> GenerationResult:
        """Generate for all prompts concurrently as one batch, using the trial's draft."""

    @abc.abstractmethod
    def lm_eval_model(self) -> Any:
        """An lm-eval `LM` over this very loaded model (same weights, same quantization)."""

    @abc.abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of weights read per decode step (for the memory-bandwidth roofline)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release memory; the child process exits afterwards anyway."""
