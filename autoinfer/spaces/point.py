"""A point of the search space: one fully specified configuration, what a trial loads and measures.

Here, beside the dimensions it is made of, so the space can build points and the engines read them
without either importing the other (`autoinfer.engines.base` re-exports it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from autoinfer.spaces.dimensions import DEFAULT_DRAFT_TOKENS, DraftSpec, HardwareSpec


@dataclass(frozen=True)
class TrialPoint:
    """One fully specified configuration: what a trial loads and measures."""

    engine: str
    quantization: str
    draft: str
    batch_size: int
    hardware: str
    draft_tokens: int = 0  # tokens the draft proposes per step (0: no draft)
    # eager or compiled, for engines that can compile their graphs (vLLM); "" where that does not
    # apply (and for vLLM records from before the dimension existed, which ran eager by default).
    compile_mode: str = ""
    # served trials: the load point the server is measured under (`rate:R` req/s or
    # `concurrency:C`); "" for offline trials. The server is the point without it.
    load: str = ""
    # served trials: the server knobs searched beside the batch size (autoinfer.served.knobs),
    # canonical text "name=value,..."; "" where none are searched (the export's own settings).
    server_knobs: str = ""

    def __post_init__(self) -> None:
        # Left out (by a caller, or by a record from before the dimension existed): the draft's own.
        if not self.draft_tokens and self.draft != "none":
            spec = self.draft_spec
            object.__setattr__(self, "draft_tokens", spec.n if spec.kind == "prompt_lookup" else DEFAULT_DRAFT_TOKENS)

    @property
    def draft_spec(self) -> DraftSpec:
        return DraftSpec.parse(self.draft)

    @property
    def hardware_spec(self) -> HardwareSpec:
        return HardwareSpec.parse(self.hardware)

    def label(self) -> str:
        """How a point is shown everywhere (progress, tables, plots, MLflow run names)."""
        draft = f"{self.draft}×{self.draft_tokens}" if self.draft_spec.reads_weights else self.draft
        level = f"{self.quantization} {self.compile_mode}" if self.compile_mode else self.quantization
        at = f" @{self.load.replace('rate:', '').replace('concurrency:', 'c')}" if self.load else ""
        knobs = f" [{self.server_knobs}]" if self.server_knobs else ""
        return f"{self.engine} {level} {draft} b{self.batch_size}{knobs} {self.hardware}{at}"

    def server(self) -> TrialPoint:
        """The point without its load: what one running server serves."""
        return dataclasses.replace(self, load="")

    def as_dict(self) -> dict[str, Any]:
        # compile_mode only where it applies: other engines' records read as before.
        mode = {"compile_mode": self.compile_mode} if self.compile_mode else {}
        if self.load:
            mode["load"] = self.load
        if self.server_knobs:
            mode["server_knobs"] = self.server_knobs
        return {
            "engine": self.engine,
            "quantization": self.quantization,
            "draft": self.draft,
            "batch_size": self.batch_size,
            "hardware": self.hardware,
            "draft_tokens": self.draft_tokens,
            **mode,
        }
