"""Where a drafted llama.cpp batch parts from plain greedy decoding, and which pass shapes move the
target's logits there: the real drafted and plain passes (captured as they run) against the probes
`check_lossless` can make. Found a tie that passes of B copies of one sequence never show.

    python scripts/tie_probe.py examples/gemma3-270m-cpu.yaml Q4_K_M prompt_lookup:3 8
"""

import sys
from pathlib import Path
from typing import Any

import numpy as np

from autoinfer.config import load_config
from autoinfer.engines import ENGINES, TrialPoint
from autoinfer.evaluators.lossless import first_divergence
from autoinfer.evaluators.throughput import generate_set, outputs_of
from autoinfer.evaluators.workload import load_prompts, prompt_set
from autoinfer.trial import set_threads

cfg_path, quant, draft, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = load_config(cfg_path)
pt = TrialPoint("llama.cpp", quant, draft, batch, "cpu:2")
set_threads(pt)
eng = ENGINES.get("llama.cpp").load_class()(cfg, pt)
eng.load()
print({k: eng.info[k] for k in ("repack", "batch_shift") if k in eng.info}, flush=True)
wl = cfg.workload
prompts = prompt_set(load_prompts(wl.prompts, Path(cfg.base_dir)), wl.prompt_count)

rt = eng.rt
orig = rt.decode
capture: dict[str, Any] = {}


def spy(items: Any) -> list[int]:
    rows = orig(items)
    want = capture.get("want")
    if want:
        r = 0
        for _tok, pos, seq, w in items:
            if w:
                if (seq, pos) == want:
                    capture["logits"] = rt.logits(rows[r]).copy()
                    capture["shape"] = (len(items), sum(1 for it in items if it[2] == seq))
                r += 1
    return rows


rt.decode = spy  # type: ignore[method-assign]
found = None
for rep in range(3):
    drafted = outputs_of(generate_set(eng, prompts, batch, wl.max_new_tokens, wl.ignore_eos, True))
    plain = outputs_of(generate_set(eng, prompts, batch, wl.max_new_tokens, wl.ignore_eos, False))
    where = first_divergence(drafted, plain)
    print("rep", rep, "divergence", where, flush=True)
    if where:
        found = (where, drafted, plain)
if not found:
    sys.exit("no divergence")
(i, j), drafted, plain = found
b0 = (i // batch) * batch
group = prompts[b0 : b0 + batch]
k = i - b0
toks = eng._render(prompts[i])
pos = len(toks) + j - 1  # the position whose logits choose token j
capture["want"] = (k, pos)
eng.generate(group, wl.max_new_tokens, wl.ignore_eos, True)
real_d, shape_d = capture.pop("logits"), capture.pop("shape")
eng.generate(group, wl.max_new_tokens, wl.ignore_eos, False)
real_p, shape_p = capture.pop("logits"), capture.pop("shape")
capture["want"] = None
got, want = drafted[i][j], plain[i][j]
print(f"prompt {i} token {j}: drafted {got} plain {want}")
print(
    f"in the real runs: drafted pass (tokens, of this seq) {shape_d}, margin {real_d[want] - real_d[got]:+.4g}; "
    f"plain pass {shape_p}, margin {real_p[want] - real_p[got]:+.4g}; max |diff| {np.abs(real_d - real_p).max():.4g}"
)
width = eng.draft_width + 1
single = eng.next_token_logits(prompts[i], plain[i][:j], 1, batch)
print(
    f"probe single: margin {single[want] - single[got]:+.4g}; vs real plain {np.abs(single - real_p).max():.4g}, "
    f"vs real drafted {np.abs(single - real_d).max():.4g}"
)
for w in (width, 0, 2, 3):
    x = eng.next_token_logits(prompts[i], plain[i][:j], w, batch)
    print(f"probe width {w}, {batch} copies: shift {np.abs(single - x).max():.4g}, margin {x[want] - x[got]:+.4g}")
for w, b in ((1, 1), (width, 1), (1, 2), (1, 4)):
    x = eng.next_token_logits(prompts[i], plain[i][:j], w, b)
    print(f"probe width {w}, {b} copies: shift {np.abs(single - x).max():.4g}, margin {x[want] - x[got]:+.4g}")
