"""Which engines, levels, batch sizes, targets and drafts a model can be searched over here.

The memory rule, per engine x level, checked at the largest batch size (1, 4, 16; a batch size
is dropped only when an engine would have no level that fits at it):

    need = 1.2 x weights at the level (+ the draft's) + KV cache + lm-eval logits + runtime
    kept where need <= 80 % of the memory free now on every target the engine runs on

- weights: parameters x bits per weight / 8. transformers loads int8/int4 in fp32 and quantizes
  after loading (engines/transformers/engine.py _DTYPES), so those count at 32 bits; 1.2 covers what the
  level tables miss (embeddings kept wider, file padding, allocator slack);
- KV cache: batch x tokens per sequence x layers x kv width x 2 (K and V) x bytes per value;
  llama.cpp gives each sequence max(2048 / batch, 1024 + max_new_tokens) cells in f16;
- logits: lm-eval scores 16 sequences of up to 128 tokens at once, fp32 logits and their
  log-softmax over the vocabulary (llama.cpp's adapter reads one position at a time: none);
- runtime: the trial process's libraries (torch and lm-eval ~1 GB, llama.cpp ~0.3 GB, vLLM ~2 GB).

80 % because other processes share the machine and their memory changes while a study runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoinfer.scaffold.inspect import ModelFacts
from autoinfer.scaffold.machine import MachineFacts
from autoinfer.spaces.dimensions import LLAMACPP_LEVELS

GB = 1e9
HEADROOM = 0.8  # of the memory free now
WEIGHT_SLACK = 1.2
BATCHES = (1, 4, 16)  # as the examples; builtin:chat holds 16 prompts, the largest batch
MAX_NEW_TOKENS = 32  # the examples' workload, which the budget's reference times were measured on
# Approximate bits per weight: llama.cpp's block sizes (gguf.GGML_QUANT_SIZES); _K_M mixes keep a
# few tensors at Q6_K, hence above their base type's 4.5 / 5.5.
BITS = {
    "fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4.5, "w8a8": 8, "w4a16": 4.5,
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.7, "Q5_0": 5.5, "Q4_K_M": 4.9,
    "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "Q3_K_M": 3.9, "Q2_K": 3.4,
}  # fmt: skip
LOAD_BITS = {"int8": 32, "int4": 32}  # transformers: loaded in fp32, quantized in place afterwards
RUNTIME_BYTES = {"transformers": 1.0 * GB, "llama.cpp": 0.3 * GB, "vllm": 2.0 * GB}
LOGIT_ROWS = 16 * 128  # lm-eval batch 16 x up to 128 tokens (ARC-Easy questions with an answer)


@dataclass(frozen=True)
class Fit:
    engine: str
    level: str
    need_bytes: float  # at the largest batch size kept
    room_bytes: float

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.room_bytes


@dataclass(frozen=True)
class Plan:
    engines: tuple[str, ...]
    quantizations: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    hardware: tuple[str, ...]
    drafts: tuple[str, ...]
    draft_tokens: tuple[int, ...]
    fits: tuple[Fit, ...]  # every candidate checked, kept or not
    notes: tuple[str, ...]  # engines or batch sizes left out, and why


def plan_threads(plan: Plan, machine: MachineFacts) -> int:
    """Threads of the plan's first target (a cpu:N target's N, else every core): what estimates scale by."""
    first = plan.hardware[0]
    return int(first.split(":")[1]) if first.startswith("cpu:") else machine.cores


def candidate_levels(engine: str, model: ModelFacts, cuda: bool) -> list[str]:
    """The levels worth a first search, as the examples pick them (before the memory rule)."""
    if engine == "transformers":
        return ["fp32", "bf16", "int8"] + (["fp16"] if cuda else [])
    if engine == "vllm":
        return ["fp32", "bf16"] + (["fp16"] if cuda else []) + vllm_compressed_levels(cuda)
    # llama.cpp: the source's own level (used as is, no requantization) and the examples' four.
    # Levels above a quantized source's carry its rounding: they differ in speed, not accuracy.
    picked = {"F16", "Q8_0", "Q4_K_M", "Q4_0"} | ({model.level} if model.level in LLAMACPP_LEVELS else set())
    return [lv for lv in LLAMACPP_LEVELS if lv in picked]


def vllm_compressed_levels(cuda: bool) -> list[str]:
    """vLLM's int8/int4 levels where they can be made (llmcompressor's environment) and run here
    (w4a16 needs AVX-512 on a CPU; engines/vllm/compress.py)."""
    from autoinfer.engines.vllm.compress import cpu_int4_problem, quantizer_problem

    if quantizer_problem():
        return []
    return ["w8a8"] + (["w4a16"] if cuda or not cpu_int4_problem() else [])


def kv_bytes(engine: str, level: str, model: ModelFacts, batch: int) -> float:
    if engine == "llama.cpp":
        cells = batch * max(-(-2048 // batch), 1024 + MAX_NEW_TOKENS)
        return cells * model.layers * model.kv_dim * 2 * 2
    value_bytes = 4 if LOAD_BITS.get(level, BITS[level]) >= 32 else 2
    return batch * (512 + MAX_NEW_TOKENS) * model.layers * model.kv_dim * 2 * value_bytes


def need_bytes(engine: str, level: str, model: ModelFacts, batch: int, draft: ModelFacts | None) -> float:
    bits = LOAD_BITS.get(level, BITS[level]) if engine == "transformers" else BITS[level]
    weights = model.params * bits / 8
    if draft is not None:  # llama.cpp runs a GGUF draft at its own level; the others at the trial's
        draft_bits = BITS.get(draft.level or "", 16) if engine == "llama.cpp" else bits
        weights += draft.params * draft_bits / 8
    vocab = len(model.vocab) or 32000  # no readable vocabulary: a typical size
    logits = 0 if engine == "llama.cpp" else LOGIT_ROWS * vocab * 4 * 2
    return WEIGHT_SLACK * weights + kv_bytes(engine, level, model, batch) + logits + RUNTIME_BYTES[engine]


def _room(machine: MachineFacts, engine: str, hardware: list[str]) -> float:
    kinds = machine.engine(engine).kinds
    rooms = [t.memory_bytes for t in machine.targets if t.name in hardware and t.name.split(":")[0] in kinds]
    return HEADROOM * min(rooms) if rooms else 0.0


def _engines(machine: MachineFacts, model: ModelFacts) -> tuple[list[str], list[str]]:
    """The installed engines that can take this source, and why the others were left out."""
    kept, notes = [], []
    for e in machine.engines:
        if not e.usable:
            notes.append(f"{e.name}: {e.why}")
            continue
        if e.name == "llama.cpp" and model.format == "hf":
            from autoinfer.engines.llamacpp.convert import converter_script
            from autoinfer.errors import TrialError

            try:
                converter_script()  # an HF checkpoint reaches llama.cpp through llama.cpp's converter
            except TrialError as err:
                notes.append(f"llama.cpp: {err}")
                continue
        kept.append(e.name)
    return kept, notes


def make_plan(model: ModelFacts, machine: MachineFacts, draft: ModelFacts | None, draft_text: str | None) -> Plan:
    """The space: every installed engine that can take the model, levels and batches that fit."""
    engines, notes = _engines(machine, model)
    cuda_kinds = any("cuda" in machine.engine(e).kinds for e in engines)
    hardware = [t.name for t in machine.targets if t.name.startswith("cpu") or (cuda_kinds and t.memory_bytes > 0)]
    cuda = any(h.startswith("cuda") for h in hardware)
    # The largest batch sizes are where tokens per joule peaked on every grid measured here, so a
    # level that does not fit at the largest batch is left out first; a batch size goes only when
    # an engine would have no level left at it.
    batches = list(BATCHES)
    while True:
        fits = [Fit(e, lv, need_bytes(e, lv, model, batches[-1], draft), _room(machine, e, hardware))
                for e in engines for lv in candidate_levels(e, model, cuda)]  # fmt: skip
        if len(batches) == 1 or all(any(f.fits for f in fits if f.engine == e) for e in engines):
            break
        batches.pop()
    if len(batches) < len(BATCHES):
        notes.append(f"batch sizes above {batches[-1]} left out: an engine would have no level that fits")
    for e in engines:
        if not any(f.fits for f in fits if f.engine == e):
            notes.append(f"{e}: no level fits in memory")
    engines = [e for e in engines if any(f.fits for f in fits if f.engine == e)]
    levels = list(dict.fromkeys(f.level for f in fits if f.fits))
    drafts = ["none", "prompt_lookup:3"] + ([f"model:{draft_text}"] if draft_text else [])
    return Plan(
        engines=tuple(engines),
        quantizations=tuple(levels),
        batch_sizes=tuple(batches),
        hardware=tuple(h for h in hardware if any(h.split(":")[0] in machine.engine(e).kinds for e in engines)),
        drafts=tuple(drafts),
        draft_tokens=(2, 4, 8) if draft_text else (),
        fits=tuple(fits),
        notes=tuple(notes),
    )
