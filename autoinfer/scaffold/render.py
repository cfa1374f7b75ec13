"""The config init writes: YAML in the examples' layout, with comments saying where each choice came from."""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from autoinfer.scaffold.budget import Estimate, generative_item_s
from autoinfer.scaffold.inspect import ModelFacts
from autoinfer.scaffold.machine import MachineFacts
from autoinfer.scaffold.plan import GB, HEADROOM, Plan, plan_threads

ARC_EASY = Path(__file__).resolve().parents[2] / "data" / "arc_easy" / "test.jsonl"
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Rendering:
    """Everything the YAML is made from."""

    command: str  # the init command line, recorded in the header
    out: Path
    model: ModelFacts
    draft: ModelFacts | None
    machine: MachineFacts
    plan: Plan
    estimate: Estimate | None  # None on the first pass, which only counts the space's points


def path_for(path: str, folder: Path) -> str:
    """A local path as the config should hold it: relative to the config's folder (how configs
    resolve paths) when the two share a folder below the root (a checkout moved as a whole keeps
    working), else absolute (../../root/... from /tmp would break when either moves)."""
    target, here = Path(path).resolve(), folder.resolve()
    if Path(os.path.commonpath([target, here])) == Path(target.anchor):
        return str(target)
    return os.path.relpath(target, here)


def source_text(model: ModelFacts, folder: Path, as_draft: bool = False) -> str:
    """model.source (or a draft's source) for a config in `folder`."""
    if model.source.startswith(("package:", "chunks:")) or not Path(model.source).is_absolute():
        return model.source
    if as_draft and model.gguf_file:  # a draft names its file: a folder may hold several GGUFs
        return path_for(str(Path(model.source) / model.gguf_file), folder)
    return path_for(model.source, folder)


def _flow(values: tuple[object, ...] | list[object]) -> str:
    """A YAML flow list; anything but a plain name is double-quoted (JSON strings are YAML)."""
    items = [str(v) if isinstance(v, int) or _PLAIN.fullmatch(str(v)) else json.dumps(str(v)) for v in values]
    return "[" + ", ".join(items) + "]"


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


WIDTH = 110


def _wrapped(lines: list[str]) -> list[str]:
    """Comment lines wrapped at WIDTH, each continuation under its own indent and `#`."""
    out = []
    for line in lines:
        body = line.lstrip(" ")
        if len(line) <= WIDTH or not body.startswith("#"):
            out.append(line)
            continue
        lead = line[: len(line) - len(body)] + "# "
        out += textwrap.wrap(body[1:].strip(), WIDTH, initial_indent=lead, subsequent_indent=lead + "  ",
                             break_on_hyphens=False, break_long_words=False)  # fmt: skip
    return out


def memory_listing(p: Plan) -> str:
    """Each candidate's estimated need, grouped by engine: what was kept and what left out."""
    parts = []
    for engine in dict.fromkeys(f.engine for f in p.fits):
        levels = [f"{f.level} {f.need_bytes / GB:.1f}" + ("" if f.fits else " (left out)")
                  for f in p.fits if f.engine == engine]  # fmt: skip
        parts.append(f"{engine} {', '.join(levels)} GB")
    return "; ".join(parts)


def _header(r: Rendering) -> list[str]:
    m, mc = r.model, r.machine
    gpus = ", ".join(t.name for t in mc.targets if t.name.startswith("cuda")) or "no GPU"
    lines = [
        f"# Written by `{r.command}` for this machine: {mc.cpu}, {mc.cores} cores, "
        f"{_gb(mc.ram_available)} free of {_gb(mc.ram_total)}, {gpus}.",
        f"# {m.describe()}.",
        f"# Paths are relative to this file. Check it, then: autoinfer validate {r.out.name} && "
        f"autoinfer search {r.out.name}",
    ]
    if r.draft is not None:
        lines.append(f"# Draft: {r.draft.describe()}; same tokenizer ({len(r.draft.vocab)} tokens).")
    return lines


def _model(r: Rendering) -> list[str]:
    m = r.model
    lines = ["model:", f"  source: {source_text(m, r.out.parent)}"]
    if m.gguf_file:
        lines.append(f"  gguf_file: {m.gguf_file}")
    why = "the model carries a chat template" if m.chat_template else "no chat template: prompts are continued as text"
    lines.append(f"  chat_template: {'true' if m.chat_template else 'false'}   # {why}")
    return lines


def _space(r: Rendering) -> list[str]:
    p, mc = r.plan, r.machine
    room = min(f.room_bytes for f in p.fits) / HEADROOM
    lines = ["space:", "  # the engines installed here that take this model" + "".join(f"; {n}" for n in p.notes),
             f"  engine: {_flow(p.engines)}",
             "  # lower-case names are transformers/vLLM formats, upper-case ones llama.cpp levels, each kept where "
             f"1.2 x weights + KV cache + logits + runtime <= {HEADROOM:.0%} of the {_gb(room)} free now "
             f"(autoinfer/scaffold/plan.py): {memory_listing(p)}"]  # fmt: skip
    lines.append(f"  quantization: {_flow(p.quantizations)}")
    draft_note = "   # transformers drafts at batch 1 only, llama.cpp and vLLM at every batch"
    lines.append(f"  draft: {_flow(p.drafts)}{draft_note}")
    if p.draft_tokens:
        lines.append(f"  draft_tokens: {_flow(p.draft_tokens)}   # tokens the model draft proposes per verification")
    lines.append(f"  batch_size: {_flow(p.batch_sizes)}")
    meters = "; ".join(f"{t.name}: {t.meter}" for t in mc.targets if t.name in p.hardware)
    lines.append(f"  hardware: {_flow(p.hardware)}   # energy meter {meters}")
    if "vllm" in p.engines:  # eager only by default: compiling adds 60-120 s to every vLLM load here
        lines.append("  compile_mode: [eager]   # vLLM: add compiled to search its torch.compile graphs too")
    return lines


# Served trials, commented out: uncomment to measure each point's exported server under a request
# stream instead of static batches (docs/served.md). Rates and SLOs sane for a small CPU machine.
SERVED_BLOCK = [
    "  # mode: served          # measure the exported server under a request stream (docs/served.md)",
    "  # served:",
    "  #   requests: 24        # per load point (a p95 needs tens)",
    "  #   request_rate: [0.5, 1, 2]   # req/s, each a load point of the same running server",
    "  #   slo: {ttft_s: 1.0, tpot_s: 0.1}   # a good request: first token in 1 s, then 10 tok/s",
]


def _workload_accuracy(r: Rendering) -> list[str]:
    lines = ["workload:", "  prompts: builtin:chat", "  max_new_tokens: 32", "  repeats: 2", "  warmup: 1",
             *SERVED_BLOCK, "", "accuracy:", "  tasks:", "    - name: arc_easy"]  # fmt: skip
    if ARC_EASY.is_file():
        lines += ["      data_files:   # the ARC-Easy rows shipped in data/arc_easy (CC BY-SA 4.0)",
                  f"        test: {path_for(str(ARC_EASY), r.out.parent)}"]  # fmt: skip
    else:
        lines[-1] += "   # no data/arc_easy here: lm-eval downloads allenai/ai2_arc on first use"
    lines += [*_generative(r), "  limit: 100"]
    return lines


# Below this many parameters a model answers almost no GSM8K or MBPP item: its score there is the
# floor, not a ranking of levels (SmolLM2-135M, docs/metrics.md#accuracy-tasks).
GENERATIVE_MIN_PARAMS = 400_000_000


def _generative(r: Rendering) -> list[str]:
    """A generative task that fits the model, commented out where it would go (it costs minutes a
    level, and a code task runs model-written programs: both are the user's call), or why none is
    offered."""
    m = r.model
    size = f"{m.params / 1e9:.2g} B parameters"
    notes = ["    # (limit 100: a 95 % interval of about +-0.09 near 0.35; ~370 items give +-0.05)"]
    item_s = generative_item_s(m.params, plan_threads(r.plan, r.machine))
    if item_s is not None:  # not in the estimate above, which counts the config as written
        minutes = item_s * 100 / 60
        notes += [
            f"    # Uncommented, it adds about {minutes:.0f} min per level at limit 100 (estimated from the",
            "    # MBPP runs of scripts/results/generative_by_level.json, scaled to this model and threads).",
        ]
    if m.params < GENERATIVE_MIN_PARAMS:
        return [
            f"    # Generated answers (gsm8k_cot, mbpp_autoinfer) are not offered: at {size} a model",
            "    # is near the floor on both (almost no item right), which ranks nothing.",
        ]
    data = ARC_EASY.parents[1]
    if "code" in m.name.lower() and (data / "mbpp" / "mbpp.jsonl").is_file():  # the model's own name, not its path
        mbpp = path_for(str(data / "mbpp" / "mbpp.jsonl"), r.out.parent)
        return [
            f"    # A code model ({size}): judge it by the code it writes, MBPP pass@1",
            "    # (docs/metrics.md#code-tasks). Each generated program runs against its asserts,",
            "    # confined but not sandboxed: opt-in (uncomment all three lines).",
            *notes,
            "    # - name: mbpp_autoinfer",
            f"    #   data_files: {{test: {mbpp}}}",
            "  # allow_code_execution: true",
        ]
    if not (data / "gsm8k" / "test.jsonl").is_file():
        return []
    gsm8k = path_for(str(data / "gsm8k" / "test.jsonl"), r.out.parent)
    return [
        f"    # Judged by the answers it generates instead ({size}): GSM8K, 8-shot chain of thought.",
        *notes,
        "    # - name: gsm8k_cot",
        f"    #   data_files: {{test: {gsm8k}}}",
    ]


def _objectives() -> list[str]:
    return [
        "objectives:",
        "  - {name: correct_tokens_per_j, direction: maximize}",
        "  - {name: accuracy, direction: maximize}",
        "  - {name: latency_p50_s, direction: minimize}",
        "",
        "# constraints:   # e.g. rank only configurations clearly above chance (ARC-Easy has 4 choices: 0.25)",
        '#   - "accuracy >= 0.35"',
    ]


def _search(r: Rendering, study: str) -> list[str]:
    e = r.estimate
    trials = e.trials if e else 1
    lines = ["search:"]
    if e is not None:
        lines += [
            f"  # An estimate, not a measurement: {plural(e.trials, 'trial')} x ~{e.trial_s:.0f} s + "
            f"{plural(min(e.trials, e.weight_sets), 'lm-eval run')} x ~{e.accuracy_s:.0f} s + ~{e.once_s:.0f} s of "
            "files made once",
            f"  # = ~{e.total_s(e.trials) / 60:.1f} min for --minutes {e.minutes:g} ({e.points} points in the space; "
            f"stage times {e.ref.origin.split(' (')[0]}, scaled by size and threads: autoinfer/scaffold/budget.py)",
            f"  trials: {trials}",
            f"  timeout_s: {e.minutes * 60:g}   # no trial starts after --minutes; the one running finishes",
        ]
    else:
        lines.append(f"  trials: {trials}")
    trial_timeout = max(1800, round(3 * (e.trial_s + e.accuracy_s))) if e else 1800
    lines += [f"  trial_timeout_s: {trial_timeout}", "  sampler: auto", "  seed: 0", f"  study_name: {study}"]
    return lines


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def study_name(r: Rendering) -> str:
    m = r.model
    stem = Path(m.gguf_file).stem if m.gguf_file and m.gguf_file != "model.gguf" else m.name
    base = re.sub(r"[^a-z0-9_.]+", "-", f"{stem}-{'-'.join(r.plan.hardware)}".lower()).strip("-")
    return base[:90]


def render(r: Rendering) -> str:
    sections = [_header(r), _model(r), _space(r), _workload_accuracy(r), _objectives(), _search(r, study_name(r))]
    return "\n\n".join("\n".join(_wrapped(s)) for s in sections) + "\n"
