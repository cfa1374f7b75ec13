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
else parts beyond a tie. Every differing prompt is judged, not just the first.

A draft that parts beyond a tie is measured, not refused outright (`draft_refusal`): plain greedy
decoding parts from itself too when only the batch shape changes (bf16 near-ties), so the check
also decodes the prompts plainly at a second batch size and counts those partings. The trial is
ranked where its accuracy comes from what the drafted engine generated (a generative task on an
engine whose eval generates with the draft), or where the draft parts from plain greedy no more
often than plain greedy parts from itself; otherwise nothing judges the tokens it produced, and
the trial fails. `draft_divergence` is recorded either way: `draft_divergence <= 0` as a
constraint requires lossless drafts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from autoinfer.engines.base import Engine

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
    diverged: int = 0  # prompts whose drafted output parted from plain greedy beyond a tie
    # Prompts whose plain greedy output at `self_batch` sequences per batch parted from plain greedy
    # at the trial's batch size; measured only where the draft diverged (None: not measured).
    self_diverged: int | None = None
    self_batch: int = 0

    @property
    def divergence(self) -> float:
        """Fraction of prompts the draft parted from plain greedy decoding on, beyond a tie."""
        return self.diverged / self.prompts if self.prompts else 0.0

    @property
    def self_divergence(self) -> float | None:
        """Fraction of prompts plain greedy parted from itself between the two batch sizes."""
        return None if self.self_diverged is None or not self.prompts else self.self_diverged / self.prompts


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
    drafted output differs; where some part beyond a tie, also count how often plain greedy parts
    from itself at another batch size. The evidence for each prompt goes to the trial's log."""
    from autoinfer.evaluators.throughput import generate_set, outputs_of

    wl = engine.config.workload
    batch = engine.point.batch_size
    plain = outputs_of(generate_set(engine, prompts, batch, wl.max_new_tokens, wl.ignore_eos, False))
    n = len(plain)
    judged = [
        v for i, (p, d, q) in enumerate(zip(prompts, drafted, plain, strict=True)) if (v := judge(engine, p, i, d, q))
    ]
    if not judged:
        return DraftCheck(
            True, f"{n} prompts, {sum(map(len, plain))} tokens identical to plain greedy decoding", 0, 0.0, n
        )
    broken = [v for v in judged if not v.tie]
    ties = [v for v in judged if v.tie]
    tie_text = f"floating-point tie: {'; '.join(v.describe() for v in ties)}; {len(ties)} of {n} prompts tied"
    if not broken:
        return DraftCheck(
            False,
            f"{tie_text}{', the others identical to plain greedy decoding' * (len(ties) < n)} ({UNITS})",
            len(ties), max(abs(v.margin) for v in ties), n,
        )  # fmt: skip
    # Each prompt, with its evidence, goes to the trial's log (a trial's stderr); the study and
    # MLflow get the counts.
    more = f"; {len(broken) - NAMED} more" if len(broken) > NAMED else ""
    print(f"lossless check: {'; '.join(v.describe() for v in broken[:NAMED])}{more} ({UNITS})",
          file=sys.stderr, flush=True)  # fmt: skip
    # Plain greedy at another batch size: 1 below a batch, else more where the engine can (a
    # llama.cpp or vLLM trial at batch 1 has room for one sequence only: not measured there).
    other = 1 if batch > 1 else min(4, n) if engine.plain_batch_free else 1
    self_diverged: int | None = None
    how = f"plain greedy at another batch size not measured (the engine runs {batch} sequence at a time)"
    if other != batch:
        again = outputs_of(generate_set(engine, prompts, other, wl.max_new_tokens, wl.ignore_eos, False))
        self_diverged = sum(a != b for a, b in zip(plain, again, strict=True))
        how = f"plain greedy at batch {other} parts from plain greedy at batch {batch} on {self_diverged} of {n}"
    tied = f" ({tie_text})" if ties else ""
    detail = f"{len(broken)} of {n} prompts part from plain greedy decoding beyond a tie{tied}; {how}"
    margins = [abs(v.margin) for v in ties]
    other_batch = other if self_diverged is not None else 0
    return DraftCheck(False, detail, len(ties), max(margins, default=0.0), n, len(broken), self_diverged, other_batch)


def draft_refusal(check: DraftCheck, scored_as_generated: bool) -> str | None:
    """Why a drafted trial cannot be ranked, in one line; None where it can.

    A draft that parts from plain greedy decoding beyond a tie produces tokens its target's
    log-likelihood accuracy does not judge. It ranks when the accuracy comes from what the drafted
    engine generated (`scored_as_generated`), or when it parts no more often than plain greedy
    parts from itself between two batch sizes (a variation every undrafted trial has too)."""
    if not check.diverged or scored_as_generated:
        return None
    if check.self_diverged is not None and check.diverged <= check.self_diverged:
        return None
    return (
        f"draft is not lossless: {check.diverged} of {check.prompts} prompts differ from plain greedy decoding "
        f"beyond a tie (plain greedy differs from itself on {check.self_diverged}), and no generative task "
        f"scores what it generates (the trial log names each; {DOCS})"
    )
