"""Whether a drafted trial's greedy output is plain greedy decoding of the same target, and where it
is not, whether each difference is a floating-point tie or a broken draft path.

Greedy speculative decoding must produce what plain greedy decoding of the same loaded target
produces, token for token and to full length. Where a prompt's drafted output differs, the
target's own logits at its first differing token decide what the difference is. Plain decoding
chose token `want` in a pass of one token per sequence; the drafted run chose `got` in a
verification pass, which evaluates several tokens of a sequence at once (and, in a batch, any
number of sequences), and some kernels round such passes differently. So the check measures how
far the pass shapes the engine's draft path really runs (`Engine.verify_pass_shapes`) move that
very margin, logit[want] - logit[got], from the one-token reference pass: a difference no larger
than that (and never larger than `TIE_CAP`) is a tie the kernels' rounding can flip; anything
else is a broken draft, and the trial fails. Every differing prompt is judged, not just the first.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from autoinfer.engines.base import Engine
from autoinfer.errors import TrialError

# The widest margin ever accepted as a tie, in logits (natural-log units: a margin m is a factor
# e^m between the two tokens' probabilities), whatever a pass shape measures. 0.5 is a 1.65x
# preference: output that parts from plain decoding between tokens that far apart is not "the
# same up to rounding", even where some kernel's pass shapes move logits further (repacked Q4_K
# on AVX2 moved one by 1.24). The ties seen on real models (docs/drafts.md, "Drafts against plain
# decoding") were 0 to 0.23 apart.
TIE_CAP = 0.5


@dataclass(frozen=True)
class DraftCheck:
    """What the lossless check found for one drafted trial."""

    lossless: bool  # every prompt's drafted output identical to plain greedy decoding, full length
    detail: str  # what was compared, or each tie and the evidence for it
    tied_prompts: int  # prompts whose drafted output parted from plain at a tie (0 when lossless)
    max_tie_margin: float  # largest |margin| (logits) between two tokens accepted as a tie; 0 if none
    prompts: int  # prompts compared


def divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """The first token index where two outputs differ (one ending early counts), None if equal."""
    if a == b:
        return None
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def first_divergence(
    drafted: tuple[tuple[int, ...], ...], plain: tuple[tuple[int, ...], ...]
) -> tuple[int, int] | None:
    """(prompt index, token index) where drafted output first differs from plain, None if identical."""
    for i, (a, b) in enumerate(zip(drafted, plain, strict=True)):
        j = divergence(a, b)
        if j is not None:
            return i, j
    return None


def shape_name(width: int, batch: int) -> str:
    """A (width, batch) pass shape in words: "4 tokens of 2 sequences", "1 whole sequence"."""
    seqs = f"sequence{'s' * (batch != 1)}"
    if width < 0:
        return f"the history in passes of {-width} tokens of {batch} {seqs}"
    return f"{batch} whole {seqs}" if width == 0 else f"{width} token{'s' * (width != 1)} of {batch} {seqs}"


@dataclass(frozen=True)
class Judged:
    """One differing prompt, judged at its first differing token."""

    prompt: int
    token: int
    got: int | None  # the drafted token (None: the drafted output ended there)
    want: int | None  # plain decoding's token (None: the plain output ended there)
    margin: float  # logit[want] - logit[got] in the one-token reference pass (nan: not measured)
    shift: float  # the largest move of that margin across the compared pass shapes
    shape: tuple[int, int] | None  # the pass shape that moved it most
    tolerance: float  # min(shift, TIE_CAP)
    why: str  # why it is not a tie ("" when it is)

    @property
    def tie(self) -> bool:
        return not self.why

    def describe(self) -> str:
        where = f"prompt {self.prompt} token {self.token} (drafted {self.got}, plain {self.want})"
        if math.isnan(self.margin):  # nothing measured
            return f"{where}: {self.why}"
        moved = f"{shape_name(*self.shape)} moves it {self.shift:.3g}" if self.shape else "no other pass shape"
        how = f"margin {self.margin:+.3g}, tolerance {self.tolerance:.3g} ({moved})"
        return f"{where}: {how}" + (f", {self.why}" if self.why else "")


# How many differing prompts a failure names one by one (the others are counted).
NAMED = 4
# What a refused draft's one line points to: the section that explains the check.
DOCS = "docs/drafts.md#the-lossless-check"
UNITS = f"logits; a tolerance is how far a pass shape the draft path runs moves that margin, at most {TIE_CAP}"


def judge(engine: Engine, prompt: str, index: int, drafted: tuple[int, ...], plain: tuple[int, ...]) -> Judged | None:
    """None where the two outputs are identical; else the verdict at their first difference."""
    j = divergence(drafted, plain)
    if j is None:
        return None
    got = drafted[j] if j < len(drafted) else None
    want = plain[j] if j < len(plain) else None
    batch = engine.point.batch_size
    nan = float("nan")
    if got is None or want is None:  # the same tokens up to here, then only one of them stops
        return Judged(index, j, got, want, nan, 0.0, None, 0.0, "one output ends there and the other goes on")
    ref = engine.next_token_logits(prompt, plain[:j], 1, batch)  # one token per sequence per pass, as plain
    if ref is None:
        return Judged(index, j, got, want, nan, 0.0, None, 0.0, "the engine cannot show its logits there")
    margin = float(ref[want]) - float(ref[got])
    shifts: dict[tuple[int, int], float] = {}
    for shape in engine.verify_pass_shapes():
        if shape != (1, batch) and shape not in shifts:
            x = engine.next_token_logits(prompt, plain[:j], *shape)
            shifts[shape] = abs(float(x[want]) - float(x[got]) - margin)
    most = max(shifts, key=lambda s: shifts[s]) if shifts else None
    shift = shifts[most] if most is not None else 0.0
    tolerance = min(shift, TIE_CAP)
    # A tie: the target's best token is one of the two (which one a one-token pass prefers is itself
    # down to rounding: at batch > 1 it may pick the drafted token while plain decoding, with other
    # rows beside it, picked the other), and a pass shape the draft path runs moves their margin at
    # least as far as it is wide.
    best = int(ref.argmax())
    why = ""
    if best not in (want, got):
        why = f"the target's best token there is {best}, neither of the two"
    elif abs(margin) > tolerance:
        why = "beyond what pass shape moves them" if shift <= TIE_CAP else f"beyond the cap of {TIE_CAP}"
    return Judged(index, j, got, want, margin, shift, most, tolerance, why)


def check_lossless(engine: Engine, prompts: list[str], drafted: tuple[tuple[int, ...], ...]) -> DraftCheck:
    """Decode the prompts again without the draft (same batches) and judge every prompt whose
    drafted output differs; raises TrialError naming each one that is not a tie."""
    from autoinfer.evaluators.throughput import generate_set, outputs_of

    wl = engine.config.workload
    plain = outputs_of(generate_set(engine, prompts, engine.point.batch_size, wl.max_new_tokens, wl.ignore_eos, False))
    n = len(plain)
    judged = [
        v for i, (p, d, q) in enumerate(zip(prompts, drafted, plain, strict=True)) if (v := judge(engine, p, i, d, q))
    ]
    if not judged:
        return DraftCheck(
            True, f"{n} prompts, {sum(map(len, plain))} tokens identical to plain greedy decoding", 0, 0.0, n
        )
    broken = [v for v in judged if not v.tie]
    if broken:
        more = f"; {len(broken) - NAMED} more" if len(broken) > NAMED else ""
        ties = f"; {len(judged) - len(broken)} other prompts parted at ties" if len(judged) > len(broken) else ""
        # Each prompt, with its evidence, goes to the trial's log (a trial's stderr); the failure
        # itself is one line on the progress display, in the study and in MLflow.
        print(f"lossless check: {'; '.join(v.describe() for v in broken[:NAMED])}{more}{ties} ({UNITS})",
              file=sys.stderr, flush=True)  # fmt: skip
        raise TrialError(
            f"draft is not lossless: {len(broken)} of {n} prompts differ from plain greedy decoding beyond a tie "
            f"(the trial log names each; {DOCS})"
        )
    return DraftCheck(
        False,
        f"floating-point tie: {'; '.join(v.describe() for v in judged)}; {len(judged)} of {n} prompts tied"
        f"{', the others identical to plain greedy decoding' * (len(judged) < n)} ({UNITS})",
        len(judged),
        max(abs(v.margin) for v in judged),
        n,
    )
