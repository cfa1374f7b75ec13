"""`autoinfer init SOURCE`: a search config for one model on this machine, from what both offer.

inspect (the model's headers) -> machine (engines, targets, memory, meters) -> plan (the space
that fits) -> budget (trials for --minutes, an estimate) -> render -> validated as `autoinfer
validate` would -> written. Any problem is one ConfigError line naming the argument at fault,
and nothing is written.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoinfer.errors import ConfigError
from autoinfer.scaffold.budget import ASSUMED_INPUTS, Estimate, estimate, once_seconds
from autoinfer.scaffold.inspect import ModelFacts, inspect_source, tokenizer_mismatch
from autoinfer.scaffold.machine import MachineFacts, machine_facts
from autoinfer.scaffold.plan import HEADROOM, Plan, make_plan, plan_threads
from autoinfer.scaffold.render import Rendering, memory_listing, plural, render, source_text

if TYPE_CHECKING:
    from autoinfer.config import Config

DEFAULT_MINUTES = "30"
MAX_MINUTES = 7 * 24 * 60  # a week: beyond that a typo, not a budget


@dataclass(frozen=True)
class InitResult:
    out: Path
    model: ModelFacts
    draft: ModelFacts | None
    machine: MachineFacts
    plan: Plan
    estimate: Estimate


def parse_minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise ConfigError("--minutes", f"{text!r} is not a number of minutes") from None
    if not math.isfinite(minutes) or not 0 < minutes <= MAX_MINUTES:
        raise ConfigError("--minutes", f"{text} is outside (0, {MAX_MINUTES}] minutes")
    return minutes


def _draft(text: str, target: ModelFacts) -> ModelFacts:
    draft = inspect_source(text, "--draft", Path.cwd())
    if (draft.location, draft.gguf_file) == (target.location, target.gguf_file):
        raise ConfigError("--draft", f"{text} is the target itself; a lower level of it drafts as model:Q4_0 "
                                     "(llama.cpp), with no --draft")  # fmt: skip
    why = tokenizer_mismatch(target, draft)
    if why:
        raise ConfigError("--draft", f"{text}: its tokenizer does not match {target.source}'s ({why}); "
                                     "a draft must share the target's token ids")  # fmt: skip
    if draft.assembled:
        raise ConfigError("--draft", f"{text} assembles its GGUF on first use, which a draft source cannot; "
                                     "name its chunk set (chunks:...) or the assembled .gguf file")  # fmt: skip
    return draft


def _validated(text: str, out: Path) -> tuple[Config, int]:
    """The rendered config parsed and checked as `autoinfer validate OUT` will; (config, points)."""
    import yaml

    from autoinfer.config import parse_config
    from autoinfer.preflight import check

    try:
        config = parse_config(yaml.safe_load(text), str(out), str(out.parent))
        return config, check(config, str(out))
    except ConfigError as e:  # a plan init should not have made: say so, write nothing
        raise ConfigError("init", f"the config it made would not validate ({e}); nothing written") from None


def command_line(source: str, out: Path, draft: str | None, minutes_text: str) -> str:
    """The init command as a user would retype it (recorded in the config's header)."""
    args = ["autoinfer", "init", source, "--out", str(out)] + (["--draft", draft] if draft else [])
    return shlex.join(args + (["--minutes", minutes_text] if minutes_text != DEFAULT_MINUTES else []))


def run_init(source: str, out: Path, draft: str | None, minutes_text: str, force: bool) -> InitResult:
    """Inspect, plan, estimate, render, validate, then write `out`; nothing is written on any error."""
    if out.exists() and not force:
        raise ConfigError("--out", f"{out} exists; pass --force to overwrite it")
    if out.exists() and not out.is_file():
        raise ConfigError("--out", f"{out} is not a file")
    minutes = parse_minutes(minutes_text)
    model = inspect_source(source, "SOURCE", Path.cwd())
    draft_facts = _draft(draft, model) if draft else None
    machine = machine_facts()
    draft_text = source_text(draft_facts, out.parent, as_draft=True) if draft_facts else None
    plan = make_plan(model, machine, draft_facts, draft_text)
    if not plan.engines:
        raise ConfigError("SOURCE", f"{source}: nothing can run it here: {'; '.join(plan.notes)}")
    r = Rendering(command_line(source, out, draft, minutes_text), out, model, draft_facts, machine, plan, None)
    config, points = _validated(render(r), out)
    from autoinfer.spaces import enumerate_points

    weight_sets = len({(p.engine, p.quantization) for _, p in enumerate_points(config)})
    # llama.cpp levels other than the source's are quantized once each (cached afterwards)
    made = sum(1 for f in plan.fits if f.fits and f.engine == "llama.cpp" and f.level != model.level)
    compressed = sum(1 for f in plan.fits if f.fits and f.engine == "vllm" and f.level in ("w8a8", "w4a16"))
    once = once_seconds(plan.engines, model.format, made, compressed)
    est = estimate(model.params, plan_threads(plan, machine), plan.engines, once, weight_sets, points, minutes)
    text = render(replace(r, estimate=est))
    _validated(text, out)
    _write(out, text)
    return InitResult(out, model, draft_facts, machine, plan, est)


def _write(out: Path, text: str) -> None:
    from autoinfer.cache import atomic_file

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as tmp:  # a crash leaves no half-written config under the real name
            tmp.write_text(text)
    except OSError as e:
        raise ConfigError("--out", f"cannot write {out}: {e.strerror}") from None


def summary(result: InitResult) -> list[str]:
    """What init found and wrote, for the terminal."""
    r, mc, p, e = result, result.machine, result.plan, result.estimate
    lines = [f"model: {r.model.describe()} ({r.model.location})"]
    if r.draft is not None:
        lines.append(f"draft: {r.draft.describe()}: same tokenizer ({len(r.draft.vocab)} tokens)")
    lines.append(f"machine: {mc.cpu}, {mc.cores} cores, {mc.ram_available / 1e9:.1f} GB free of "
                 f"{mc.ram_total / 1e9:.1f} GB")  # fmt: skip
    lines.append("engines: " + ", ".join(p.engines) + "".join(f"; {n}" for n in p.notes))
    for t in mc.targets:
        if t.name in p.hardware:
            lines.append(f"target {t.name}: energy {t.meter} ({t.meter_why})")
    lines.append(f"space: {len(p.quantizations)} levels {list(p.quantizations)}, batch sizes {list(p.batch_sizes)}, "
                 f"drafts {list(p.drafts)}: {e.points} points, {e.weight_sets} sets of weights")  # fmt: skip
    lines.append(f"memory: need = 1.2 x weights + KV cache + logits + runtime <= {HEADROOM:.0%} of what is free "
                 f"now: {memory_listing(p)}")  # fmt: skip
    lines += _estimate_lines(e)
    lines.append(f"wrote {r.out}")
    lines.append(f"next: autoinfer validate {r.out} && autoinfer search {r.out}")
    return lines


def _estimate_lines(e: Estimate) -> list[str]:
    ref = e.ref
    lines = [
        f"estimate (not a measurement) for {e.minutes:g} min: {plural(e.trials, 'trial')}, "
        f"~{e.total_s(e.trials) / 60:.1f} min",
        f"  inputs: {e.params / 1e6:.1f} M parameters on {e.threads} threads; reference {ref.params / 1e6:.1f} M on "
        f"{ref.threads:.2f} threads (mean), stage times {ref.origin}",
        f"  per trial ~{e.trial_s:.0f} s (spawn/exit/logging {ref.fixed_s:.0f} s + load + warmup/generate), "
        f"lm-eval ~{e.accuracy_s:.0f} s once per set of weights, files made once ~{e.once_s:.0f} s",
        f"  {ASSUMED_INPUTS}",
    ]
    if e.trials == e.points and e.total_s(e.points) < e.minutes * 60:
        lines.append(f"  the space has only {e.points} points: every one fits the budget")
    elif e.total_s(e.trials) > e.minutes * 60:
        lines.append(f"  warning: even one trial is estimated at {e.total_s(1) / 60:.1f} min, over --minutes")
    elif e.trials < e.weight_sets:
        lines.append(f"  {plural(e.trials, 'trial')} measure {e.trials} of the {e.weight_sets} sets of weights; "
                     "more --minutes would see all of them")  # fmt: skip
    return lines
