"""The values each search dimension can take, parsed from the strings users write in YAML.

Parsing is pure (no I/O): whether a target exists on this machine is checked later by
`autoinfer.hardware.check_targets`, so `validate` stays fast and deterministic.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# Weight formats the transformers engine knows; llama.cpp levels are registered by that engine.
TRANSFORMERS_QUANTIZATIONS = ("fp32", "bf16", "fp16", "int8", "int4")
# llama.cpp levels, as its quantize tool spells them (engines/gguf_levels.py maps them to ftypes).
LLAMACPP_LEVELS = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0",
    "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "Q3_K_M", "Q2_K",
)  # fmt: skip
DRAFT_KINDS = ("none", "prompt_lookup", "early_exit", "model")
HARDWARE_KINDS = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class DraftSpec:
    """How tokens are drafted for speculative decoding; `kind == "none"` means plain decoding."""

    kind: str
    n: int = 0  # prompt_lookup: tokens proposed per step; early_exit: exit layer K
    model: str = ""  # kind == "model": HF id or path of the assistant model

    @classmethod
    def parse(cls, text: str) -> DraftSpec:
        text = str(text).strip()
        if text == "none":
            return cls("none")
        kind, sep, arg = text.partition(":")
        if not sep or kind not in DRAFT_KINDS[1:]:
            raise ValueError(f"{text!r} is not a draft; use none, prompt_lookup:N, early_exit:K or model:<id or path>")
        if kind == "model":
            if not arg:
                raise ValueError("model: needs an id or path, e.g. model:HuggingFaceTB/SmolLM2-135M")
            return cls("model", model=arg)
        if not re.fullmatch(r"[1-9][0-9]*", arg):
            raise ValueError(f"{text!r}: {kind} takes a positive integer, e.g. {kind}:4")
        return cls(kind, n=int(arg))

    @property
    def model_format(self) -> str:
        """For kind == "model": "gguf" (a .gguf file or a llama.cpp level of the target) or "hf"."""
        return "gguf" if self.model in LLAMACPP_LEVELS or self.model.endswith(".gguf") else "hf"

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"model:{self.model}" if self.kind == "model" else f"{self.kind}:{self.n}"


@dataclass(frozen=True)
class HardwareSpec:
    """A place to run: `cpu` (all cores), `cpu:N` (N threads), `cuda:I`, `mps`."""

    kind: str
    index: int | None = None  # cpu: thread count; cuda: device index

    @classmethod
    def parse(cls, text: str) -> HardwareSpec:
        text = str(text).strip()
        m = re.fullmatch(r"(cpu|cuda|mps)(?::([0-9]+))?", text)
        if not m:
            raise ValueError(f"{text!r} is not a hardware target; use cpu, cpu:N, cuda, cuda:I or mps")
        kind, idx = m.group(1), m.group(2)
        if kind == "mps" and idx is not None:
            raise ValueError("mps takes no index")
        if kind == "cpu" and idx is not None and int(idx) < 1:
            raise ValueError("cpu:N needs N >= 1 threads")
        if kind == "cuda" and idx is None:
            idx = "0"
        return cls(kind, None if idx is None else int(idx))

    @property
    def threads(self) -> int:
        """CPU threads a trial on this target runs: N for cpu:N, else every core."""
        if self.kind == "cpu" and self.index:
            return self.index
        return os.cpu_count() or 1

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index or 0}" if self.kind == "cuda" else self.kind

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"
