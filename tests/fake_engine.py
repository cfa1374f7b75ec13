"""A fake engine, registered as "fake": the search, resume and tracking code paths without a model.

`model:lossy` is a draft whose verification is broken (drafted tokens are taken unchecked), for
testing that such a trial fails; `model:tie` is one whose verification rounds differently from
plain decoding (every 7th position picks the runner-up, which its logits put within rounding);
`model:tie-batch` the same, where only a pass of one sequence shows the rounding; `model:tie-shape`
the same, with the margin per prompt, how far each pass shape moves it, which prompts flip and
which pass shapes the engine says it runs all set by a test on the loaded engine (`TieShape`).

It is a deterministic toy language model (the next token is a function of the last two) whose
forward passes burn real CPU time, so timings, the CPU-time energy estimate and the whole trial
pipeline are exercised for real. Loaded by AUTOINFER_PLUGINS=tests.fake_engine (tests/conftest.py
sets it, so trial processes and CLI subprocesses register it too).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from lm_eval.api.model import TemplateLM

from autoinfer.engines import ENGINES, Engine, EngineSpec, GenerationResult
from autoinfer.engines.base import NewTokens, StepCallback
from autoinfer.engines.llamacpp.engine import lookup_draft
from autoinfer.errors import TrialError

VOCAB = 64
EOS = 0
# Seconds one forward pass of the target burns per quantization (and per draft step).
PASS_S = {"fp32": 0.004, "bf16": 0.0025, "int8": 0.0015}
DRAFT_STEP_S = 0.0004
PARAMS = 1_000_000
CONTEXT = 512  # tokens per sequence, prompt and answer: what `autoinfer serve` admits


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def next_token(a: int, b: int) -> int:
    return (7 * a + 3 * b + 5) % VOCAB


def encode(text: str) -> list[int]:
    return [1 + c % (VOCAB - 1) for c in text.encode()]  # never EOS


class FakeLM(TemplateLM):
    """Scores a continuation by how often the toy model would have produced each of its tokens."""

    def __init__(self, quantization: str) -> None:
        super().__init__()
        self.shift = {"fp32": 0, "bf16": 0, "int8": 1}.get(quantization, 0)

    @property
    def eot_token_id(self) -> int:
        return EOS

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        return encode(string)

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
        out = []
        for _, ctx, cont in requests:
            hist = list(ctx)
            score = 0.0
            for t in cont:
                a, b = [1, 1, *hist][-2:]
                score -= abs(next_token(b, a) - t + self.shift) / VOCAB
                hist.append(t)
            out.append((score, False))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return [-1.0 for _ in requests]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return ["" for _ in requests]


# Quantizations that fail the way real trials do, for fault-injection tests.
FAULTS = ("segv", "oom", "hang", "raise")


def inject(fault: str) -> None:
    if fault == "segv":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if fault == "oom":
        import resource

        # Cap the address space a little above what the process holds, then ask for much more.
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        bytearray(2 * 2**30)
    if fault == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected {fault} failure")


TIES = ("tie", "tie-single", "tie-batch", "tie-shape")


@dataclass
class TieShape:
    """What `model:tie-shape` does at the positions its verification flips (runner-up: token + 2)."""

    margin: dict[str, float] = field(default_factory=dict)  # per prompt: logit[plain] - logit[runner-up]
    default_margin: float = 0.01  # for prompts not in `margin`, in the reference pass (1, batch)
    # How far a pass of each (width, batch) shape lowers that margin (0 for shapes not listed).
    shift: dict[tuple[int, int], float] = field(default_factory=dict)
    noise: float = 0.0  # how far every other pass shape moves an unrelated token (never the best)
    prompts: tuple[str, ...] | None = None  # the prompts whose verification flips (None: all)
    shapes: tuple[tuple[int, int], ...] | None = None  # what verify_pass_shapes says (None: the default)


class FakeEngine(Engine):
    plain_batch_free = True

    def load(self) -> None:
        if self.point.quantization in FAULTS:
            inject(self.point.quantization)
        # A slow load, so a test can catch a trial running (and kill its worker).
        time.sleep(float(os.environ.get("AUTOINFER_FAKE_LOAD_S", "0")))
        if self.point.quantization not in PASS_S:
            raise TrialError(f"fake engine has no {self.point.quantization}")
        self.pass_s = PASS_S[self.point.quantization]
        self.draft_width = 3 if self.point.draft != "none" else 0
        self.tie_shape = TieShape()
        self.info["fake"] = True

    def _stops(self, t: int) -> bool:
        return t == EOS or t in self.stop_tokens

    def _draft(self, hist: list[int], n: int) -> list[int]:
        d = self.point.draft_spec
        if d.kind == "prompt_lookup":
            return lookup_draft(hist, n)
        out, h = [], list(hist)
        for _ in range(n):  # a draft model that is right unless the history length is a multiple of 5
            t = next_token(h[-1], h[-2])
            out.append(t if len(h) % 5 else (t + 1) % VOCAB)
            h.append(t)
        return out

    def generate_ids(
        self, prompts: Any, max_new_tokens: int, ignore_eos: bool = False, draft: bool = True,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:  # fmt: skip
        start = time.perf_counter()
        hists = [list(p) for p in prompts]
        d = self.point.draft_spec
        _burn(self.pass_s * (1 + 0.2 * len(prompts)))  # prefill
        outs: list[list[int]] = [[] for _ in prompts]
        times: list[list[float]] = [[] for _ in prompts]
        ties = self.tie_shape.prompts
        flips = [d.model in TIES and (ties is None or list(p) in map(encode, ties)) for p in prompts]
        for h, o, tm in zip(hists, outs, times, strict=True):
            t = next_token(h[-1], h[-2])
            h.append(t)
            o.append(t)
            tm.append(time.perf_counter() - start)
        report = NewTokens(on_step, len(outs))
        report(outs)
        passes = steps = proposed = accepted = 0
        live = [i for i, o in enumerate(outs) if max_new_tokens > 1 and (ignore_eos or not self._stops(o[-1]))]
        while live:
            passes += 1
            _burn(self.pass_s * (1 + 0.2 * len(live)))
            now = time.perf_counter() - start
            still = []
            for i in live:
                h, o = hists[i], outs[i]
                guess = self._draft(h, min(3, max_new_tokens - len(o) - 1)) if draft and d.kind != "none" else []
                if d.kind == "model" and guess:
                    steps += len(guess)
                    _burn(DRAFT_STEP_S * len(guess))
                proposed += len(guess)
                for k in range(len(guess) + 1):
                    t = next_token(h[-1], h[-2])
                    if d.model == "lossy" and k < len(guess):
                        t = guess[k]  # a broken verifier: takes the draft's word for it
                    if draft and flips[i] and len(h) % 7 == 0:
                        t = (t + 2) % VOCAB  # a verification pass whose rounding flips a near-tie
                    h.append(t)
                    o.append(t)
                    times[i].append(now)
                    ended = (self._stops(t) and not ignore_eos) or len(o) >= max_new_tokens
                    if ended or k == len(guess) or guess[k] != t:
                        break
                    accepted += 1
                if not ended:
                    still.append(i)
            report(outs)
            live = still
        total = time.perf_counter() - start
        return GenerationResult(
            tuple(map(tuple, outs)), tuple(map(tuple, times)), total, passes, steps, proposed, accepted
        )

    def next_token_logits(self, prompt: str, prefix: Any, width: int, batch: int = 1) -> Any:
        import numpy as np

        h = encode(prompt) + list(prefix)
        t = next_token(h[-1], h[-2])
        logits = np.zeros(VOCAB, dtype=np.float64)
        logits[t] = 1.0
        if self.point.draft_spec.model == "tie-shape":
            ts = self.tie_shape
            logits[(t + 2) % VOCAB] = 1.0 - ts.margin.get(prompt, ts.default_margin) + ts.shift.get((width, batch), 0)
            if (width, batch) != (1, self.point.batch_size):
                logits[(t + 5) % VOCAB] = 0.1 + ts.noise
        if self.point.draft_spec.model == "tie":  # the runner-up within what batch shape changes
            logits[(t + 2) % VOCAB] = 0.99 if width == 1 else 1.01
        if self.point.draft_spec.model == "tie-single":  # even a one-token pass prefers the drafted token
            logits[(t + 2) % VOCAB] = 1.004 if width == 1 else 1.01
        if self.point.draft_spec.model == "tie-batch":  # only passes of one sequence round differently
            logits[(t + 2) % VOCAB] = 0.99 if batch > 1 else 1.01
        return logits

    def verify_pass_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.tie_shape.shapes or super().verify_pass_shapes()

    def prompt_ids(self, prompt: str) -> list[int]:
        return encode(prompt)

    def raw_ids(self, text: str) -> list[int]:
        return encode(text)  # no chat template to leave out

    def end_ids(self) -> set[int]:
        return {EOS} | self.stop_tokens

    def text(self, ids: Any) -> str:
        return " ".join(str(t) for t in ids if t != EOS)

    def lm_eval_model(self) -> Any:
        return FakeLM(self.point.quantization)

    def context_tokens(self) -> int | None:
        return CONTEXT

    def weight_bytes(self) -> int:
        return int(PARAMS * {"fp32": 4, "bf16": 2, "int8": 1}[self.point.quantization])

    def draft_weight_bytes(self) -> int:
        return PARAMS // 10 if self.point.draft_spec.kind == "model" else 0


ENGINE = FakeEngine

if "fake" not in ENGINES:
    ENGINES.register("fake")(
        EngineSpec(
            name="fake",
            module="tests.fake_engine",
            quantizations=tuple(PASS_S) + FAULTS,
            draft_kinds=("none", "prompt_lookup", "model"),
            hardware_kinds=("cpu",),
            draft_max_batch=1,
            package="lm_eval",
            # Served as a transformers trial is: by `autoinfer serve` on this very engine.
            export="autoinfer.engines.transformers.export:runtime",
        )
    )
