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
# What the vLLM engine runs an HF checkpoint (or a dequantized GGUF) in: the dtype it computes in, or
# a compressed-tensors checkpoint made from it (int8 weights and activations; int4 weights).
# vLLM's CPU build has no fp16 kernels worth measuring and no GGUF or bitsandbytes loader there.
VLLM_QUANTIZATIONS = ("fp32", "bf16", "fp16", "w8a8", "w4a16")
# llama.cpp levels, as its quantize tool spells them (engines/llamacpp/levels.py maps them to ftypes).
LLAMACPP_LEVELS = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0",
    "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "Q3_K_M", "Q2_K",
)  # fmt: skip
# How an engine that can compile runs its graphs: eager (the default) or compiled (vLLM's
# torch.compile; CUDA graphs too on a GPU).
COMPILE_MODES = ("eager", "compiled")
DRAFT_KINDS = ("none", "prompt_lookup", "early_exit", "model")
HARDWARE_KINDS = ("cpu", "cuda", "mps")


DEFAULT_NGRAM = 3  # prompt lookup matches the longest of the last 3, 2, 1 tokens
DEFAULT_DRAFT_TOKENS = 4  # tokens a model draft proposes per step unless space.draft_tokens says


@dataclass(frozen=True)
class DraftSpec:
    """How tokens are drafted for speculative decoding; `kind == "none"` means plain decoding.

    - `prompt_lookup:N` proposes N tokens that followed the latest earlier match of the context's
      last tokens (`prompt_lookup:N/G`: match up to G tokens, default 3);
    - `early_exit:K` drafts with the target's first K layers;
    - `model:SOURCE` drafts with another model (a hub id, a directory, a .gguf file, `package:X`,
      `chunks:...`); `model:SOURCE@LEVEL` quantizes that draft to a llama.cpp level first, and
      `model:LEVEL` is the target itself at that level. How many tokens a model or early-exit draft
      proposes per step is the `draft_tokens` dimension.
    """

    kind: str
    n: int = 0  # prompt_lookup: tokens proposed per step; early_exit: exit layer K
    model: str = ""  # kind == "model": the draft's source, or a level of the target
    level: str = ""  # kind == "model": the llama.cpp level the draft source is quantized to
    ngram: int = 0  # prompt_lookup: longest n-gram matched

    @classmethod
    def parse(cls, text: str) -> DraftSpec:
        text = str(text).strip()
        if text == "none":
            return cls("none")
        kind, sep, arg = text.partition(":")
        if not sep or kind not in DRAFT_KINDS[1:]:
            raise ValueError(
                f"{text!r} is not a draft; use none, prompt_lookup:N, early_exit:K or model:<source>[@LEVEL]"
            )
        if kind == "model":
            source, at, level = arg.rpartition("@")
            if not at:
                source, level = arg, ""
            if not source:
                raise ValueError("model: needs a source, e.g. model:HuggingFaceTB/SmolLM2-135M or model:Q4_0")
            if level and level not in LLAMACPP_LEVELS:
                raise ValueError(f"{text!r}: {level!r} is not a llama.cpp level (e.g. Q8_0, Q4_0)")
            if level and source in LLAMACPP_LEVELS:
                raise ValueError(f"{text!r}: model:{source} is already a level of the target")
            return cls("model", model=source, level=level)
        if kind == "prompt_lookup" and re.fullmatch(r"[1-9][0-9]*/[1-9][0-9]*", arg):
            n, g = arg.split("/")
            return cls(kind, n=int(n), ngram=int(g))
        if not re.fullmatch(r"[1-9][0-9]*", arg):
            raise ValueError(f"{text!r}: {kind} takes a positive integer, e.g. {kind}:4")
        return cls(kind, n=int(arg), ngram=DEFAULT_NGRAM if kind == "prompt_lookup" else 0)

    @property
    def target_level(self) -> bool:
        """`model:LEVEL`: the target itself at another llama.cpp level."""
        return self.kind == "model" and self.model in LLAMACPP_LEVELS

    @property
    def reads_weights(self) -> bool:
        """Whether drafting runs a model (whose draft_tokens are searched) rather than a lookup."""
        return self.kind in ("model", "early_exit")

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "model":
            return f"model:{self.model}" + (f"@{self.level}" if self.level else "")
        if self.kind == "prompt_lookup" and self.ngram != DEFAULT_NGRAM:
            return f"prompt_lookup:{self.n}/{self.ngram}"
        return f"{self.kind}:{self.n}"


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
