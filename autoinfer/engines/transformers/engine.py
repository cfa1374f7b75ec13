"""The transformers engine: eager PyTorch, any HF causal LM, GGUF via cached dequantization.

Speculative decoding uses transformers' own assisted generation (prompt lookup, early-exit
self-speculation, or an assistant model from any source, GGUF files dequantized once), which
accepts batch size 1 only; the space never pairs a draft with a larger batch for this engine.
"""

from __future__ import annotations

import importlib.metadata
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from autoinfer.engines.base import GenerationResult, HFTokenizerEngine, StepCallback, TrialPoint
from autoinfer.engines.sources import dequantized, dequantized_checkpoint, resolve_source, source_as_gguf
from autoinfer.errors import TrialError

if TYPE_CHECKING:
    from autoinfer.config import Config

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "float32", "int4": "float32"}
# Bits per weight of quantized Linear layers, for the roofline's bytes-per-step.
_WEIGHT_BITS = {"int8": 8, "int4": 4}
# transformers.int_backend: auto, from scripts/quant_backend_benchmark.py (2 cores, SmolLM2-135M):
# int8 torchao 25.2 tok/s at batch 1 vs optimum-quanto 12.0 (76.6 vs 81.1 at batch 16); torchao 0.18
# has no CPU packing for int4, where optimum-quanto runs (8.0 tok/s at batch 1).
AUTO_INT_BACKEND = {("int8", "cpu"): "torchao", ("int4", "cpu"): "optimum-quanto"}


def resolved_int_backend(config: Config, point: TrialPoint) -> str | None:
    """The weight-quantization backend a point runs (None when its weights are not int8/int4).

    Part of the accuracy key: torchao and optimum-quanto round weights differently.
    """
    if point.quantization not in _WEIGHT_BITS:
        return None
    chosen = config.transformers.int_backend
    if chosen != "auto":
        return chosen
    return AUTO_INT_BACKEND.get((point.quantization, point.hardware_spec.kind), "torchao")


class _StepClock:
    """A streamer that timestamps every decoding step (the first `put` is the prompt itself).

    Assisted generation emits several tokens per step; `tokens` keeps how many, so each token gets
    the time of the step that produced it. `proposed_at_first` snapshots the draft tally when the
    first token comes out, so draft work after it can be told from draft work before it.
    """

    def __init__(self, tally: dict[str, int], on_step: StepCallback | None = None) -> None:
        self.start = time.perf_counter()
        self.tally = tally
        self.on_step = on_step  # each step's new tokens, per sequence (finished ones give padding)
        self.times: list[float] = []  # seconds since start, one per step
        self.tokens: list[int] = []  # tokens per sequence delivered at that step
        self.proposed_at_first = tally["proposed"]
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if not self.times:
            self.proposed_at_first = self.tally["proposed"]
        self.times.append(time.perf_counter() - self.start)
        self.tokens.append(int(value.shape[-1]) if value.dim() > 1 else 1)
        if self.on_step is not None:  # (batch,) one token each; assisted generation: (1, k)
            self.on_step([[int(t)] for t in value.tolist()] if value.dim() == 1 else value.tolist())

    def end(self) -> None:
        pass

    def token_times(self, n: int) -> tuple[float, ...]:
        """When each of a sequence's first n generated tokens came out."""
        out: list[float] = []
        for t, k in zip(self.times, self.tokens, strict=True):
            out.extend([t] * k)
            if len(out) >= n:
                break
        return tuple(out[:n])


def _count_acceptance(model: Any, tally: dict[str, int]) -> None:
    """Wrap the model's candidate generator so every draft step reports proposed/accepted tokens.

    transformers does not expose acceptance; it calls get_candidates() then
    update_candidate_strategy(num_matches) once per verification step, so we count there.
    """
    original = model._get_candidate_generator

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        gen = original(*args, **kwargs)
        get, update = gen.get_candidates, gen.update_candidate_strategy

        def get_candidates(input_ids: Any, *a: Any, **k: Any) -> Any:
            cand, logits = get(input_ids, *a, **k)
            n = int(cand.shape[1] - input_ids.shape[1])
            tally["proposed"] += n
            tally["widest"] = max(tally["widest"], n)
            return cand, logits

        def update_candidate_strategy(input_ids: Any, scores: Any, num_matches: Any) -> Any:
            tally["accepted"] += int(num_matches)
            return update(input_ids, scores, num_matches)

        gen.get_candidates = get_candidates
        gen.update_candidate_strategy = update_candidate_strategy
        return gen

    model._get_candidate_generator = wrapped


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _streamed_bytes(model: Any, quantization: str, below_layer: int | None = None) -> int:
    """Bytes streamed from memory per forward pass: every weight once.

    An untied embedding table is skipped (a lookup reads B rows, not the table); a tied one is the
    lm_head and is read in full. named_parameters() already lists tied weights once. With
    `below_layer=K`, decoder layers K and up are skipped (an early-exit draft step).
    """
    import torch

    tied = bool(model.config.get_text_config().tie_word_embeddings)
    total = 0.0
    for name, p in model.named_parameters():
        is_embed = "embed" in name
        if is_embed and not tied:
            continue
        layer = _LAYER.search(name)
        if below_layer is not None and layer and int(layer.group(1)) >= below_layer:
            continue
        quantized = quantization in _WEIGHT_BITS and p.dim() == 2 and not is_embed and "lm_head" not in name
        bits = _WEIGHT_BITS[quantization] if quantized else 8 * torch.empty((), dtype=p.dtype).element_size()
        total += p.numel() * bits / 8
    return int(total)


class TransformersEngine(HFTokenizerEngine):
    plain_batch_free = True  # generate() pads any number of prompts into one batch
    model: Any
    tokenizer: Any
    draft_model: Any
    draft_tokenizer: Any

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hw = self.point.hardware_spec
        q = self.point.quantization
        self.on_stage("prepare")
        path, facts = dequantized_checkpoint(self.config)
        self.on_stage("load")
        self.info.update(facts)
        self.info["checkpoint"] = str(path)  # what a stock server would load (export)
        m = self.config.model
        tok_src = resolve_source(self.config, m.tokenizer) if m.tokenizer else path
        common = {"trust_remote_code": m.trust_remote_code, "revision": m.revision}
        self.tokenizer = AutoTokenizer.from_pretrained(tok_src, **common)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, _DTYPES[q])
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **common)
        self.model.to(hw.torch_device).eval()
        if q in _WEIGHT_BITS:
            self._quantize(q)
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.draft_model = None
        d = self.point.draft_spec
        if d.kind == "early_exit":
            layers = self.model.config.get_text_config().num_hidden_layers
            if d.n >= layers:
                raise TrialError(f"early_exit:{d.n} needs fewer layers than the model's {layers}")
        if d.kind == "model":
            self._load_draft_model(d.model, dtype)
        self.tally = {"proposed": 0, "accepted": 0, "widest": 0}
        if d.kind != "none":
            _count_acceptance(self.model, self.tally)
        if d.reads_weights:
            # The measured draft length, every step: transformers' default schedule would adapt it.
            assistant = self.draft_model if d.kind == "model" else self.model
            assistant.generation_config.num_assistant_tokens = self.point.draft_tokens
            assistant.generation_config.num_assistant_tokens_schedule = "constant"
        self.draft_width = self.point.draft_tokens
        self.info["torch_threads"] = torch.get_num_threads()
        self.info["dtype"] = _DTYPES[q]
        self.info["torch"] = torch.__version__
        self.info["transformers"] = importlib.metadata.version("transformers")

    def _quantize(self, q: str) -> None:
        """Weight-only quantization of every Linear layer but lm_head (activations stay float).

        lm_head stays in full precision: small models tie it to the embedding, and its errors land
        directly on the logits.
        """
        kind = self.point.hardware_spec.kind
        backend = resolved_int_backend(self.config, self.point)
        if backend == "torchao" and q == "int4" and kind == "cpu":
            raise TrialError("torchao has no CPU int4 weight packing; use transformers.int_backend: optimum-quanto")
        if backend == "torchao":
            import torch
            from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

            cfg = (
                Int8WeightOnlyConfig()
                if q == "int8"
                else Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d")  # CUDA layout
            )
            quantize_(self.model, cfg, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn)
        else:
            from optimum.quanto import freeze, qint4, qint8, quantize

            quantize(self.model, weights=qint8 if q == "int8" else qint4, exclude=["lm_head"])
            freeze(self.model)
        self.info["quant_backend"] = backend
        # The float weights left as they were (embeddings, lm_head, norms) are views of the
        # checkpoint's memory map, which keeps every page quantizing read resident (~all of the
        # fp32 file). Own copies let the mapping go, so memory shows what the quantized model holds.
        import torch

        for p in self.model.parameters():
            if type(p.data) is torch.Tensor:
                p.data = p.data.clone()

    def _load_draft_model(self, source: str, dtype: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = source_as_gguf(self.config, source)
        if gguf is not None:  # a GGUF draft (a file, a chunk set): dequantized once, like the target
            src, facts = dequantized(gguf, self.config.model.trust_remote_code)
            self.info.update({f"draft_{k}": v for k, v in facts.items()})
        else:
            src = resolve_source(self.config, source)
        kw = {"trust_remote_code": self.config.model.trust_remote_code}
        try:
            self.draft_model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
            self.draft_tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        except OSError as e:
            raise TrialError(f"draft model {source!r} cannot be loaded: {e}") from None
        self.draft_model.to(self.point.hardware_spec.torch_device).eval()
        same_vocab = self.draft_tokenizer.get_vocab() == self.tokenizer.get_vocab()
        self.info["draft_same_tokenizer"] = same_vocab

    def _draft_kwargs(self) -> dict[str, Any]:
        d = self.point.draft_spec
        if d.kind == "prompt_lookup":
            return {"prompt_lookup_num_tokens": d.n, "max_matching_ngram_size": d.ngram}
        if d.kind == "early_exit":
            return {"assistant_early_exit": d.n}
        if d.kind == "model":
            kw: dict[str, Any] = {"assistant_model": self.draft_model}
            if not self.info.get("draft_same_tokenizer"):
                # Universal assisted generation: re-tokenize between the two vocabularies.
                kw |= {"tokenizer": self.tokenizer, "assistant_tokenizer": self.draft_tokenizer}
            return kw
        return {}

    def end_ids(self) -> set[int]:
        # The model's own end tokens (an instruct model's end of turn) besides the tokenizer's EOS.
        eos = self.model.generation_config.eos_token_id
        return super().end_ids() | {t for t in (eos if isinstance(eos, list) else [eos]) if t is not None}

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:  # fmt: skip
        import torch

        # Left-padded to the longest, with its attention mask: what tokenizing the rendered texts
        # together with padding=True gives.
        enc = self.tokenizer.pad({"input_ids": [list(p) for p in prompts]}, return_tensors="pt")
        enc = enc.to(self.point.hardware_spec.torch_device)
        before = dict(self.tally)
        clock = _StepClock(self.tally, on_step)
        stops = self.end_ids()
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "streamer": clock,
            "eos_token_id": sorted(stops),
            **(self._draft_kwargs() if draft else {}),
        }
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        # no_grad, not inference_mode: quanto's int4 weights cannot be unpacked inside inference_mode.
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        if self.point.hardware_spec.kind == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - clock.start
        ids: list[tuple[int, ...]] = []
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = len(row)
            if not ignore_eos:
                for i, t in enumerate(row):
                    if t in stops:  # EOS counts as produced; the padding after it does not
                        n = i + 1
                        break
            ids.append(tuple(row[:n]))
        proposed = self.tally["proposed"] - before["proposed"]
        self.draft_width = max(self.draft_width, self.tally["widest"])
        drafted = draft and self.point.draft_spec.kind != "none"
        reads_weights = drafted and self.point.draft_spec.kind in ("model", "early_exit")
        return GenerationResult(
            token_ids=tuple(ids),
            token_times=tuple(clock.token_times(len(r)) for r in ids),
            total_s=total,
            target_passes=max(len(clock.times) - 1, 0),
            draft_steps=self.tally["proposed"] - clock.proposed_at_first if reads_weights else 0,
            draft_proposed=proposed,
            draft_accepted=self.tally["accepted"] - before["accepted"],
        )

    def next_token_logits(self, prompt: str, prefix: Sequence[int], width: int, batch: int = 1) -> Any:
        # batch is ignored: transformers' assisted generation drafts at batch 1 only.
        import torch

        dev = self.point.hardware_spec.torch_device
        ids = self.tokenizer([self._render(prompt)], return_tensors="pt", add_special_tokens=False)["input_ids"]
        if width == 0:  # everything in one pass
            ids = torch.cat([ids, torch.tensor([list(prefix)], dtype=ids.dtype)], dim=1)
            prefix = []
        # The history before the last token goes in one token per pass, as plain decoding feeds it;
        # at width -w all of it goes in w tokens per pass: a drafted history's cached keys and values
        # were computed in verification passes of that width, and in bf16 they round differently
        # from one-token passes, moving every later logit a little.
        chunk, history = (-width, prefix) if width < 0 else (1, prefix[:-1])
        with torch.no_grad():
            out = self.model(input_ids=ids.to(dev), use_cache=True)
            logits = out.logits[0, -1]
            for i in range(0, len(history), chunk):
                part = torch.tensor([list(history[i : i + chunk])], device=dev)
                out = self.model(input_ids=part, past_key_values=out.past_key_values)
                logits = out.logits[0, -1]
            if prefix and width > 0:  # the last one first in a pass of `width` tokens, as in a verification
                last = torch.tensor([[prefix[-1]] * width], device=dev)
                logits = self.model(input_ids=last, past_key_values=out.past_key_values).logits[0, 0]
        return logits.float().cpu().numpy()

    def verify_pass_shapes(self) -> tuple[tuple[int, int], ...]:
        # Assisted generation runs at batch 1, and its first pass takes the whole prompt with the
        # first candidates (no separate prefill); later passes verify up to draft_width + 1 tokens,
        # and the history they accept keeps the keys and values those passes computed (-width).
        w = self.draft_width + 1
        return ((w, 1), (0, 1), (-w, 1))

    def lm_eval_model(self) -> Any:
        """lm-eval's HF model on the loaded one; a drafted trial generates with its draft."""
        from lm_eval.models.huggingface import HFLM

        from autoinfer.engines.transformers.lm import DraftedHFLM

        kw = {
            "pretrained": self.model,
            "tokenizer": self.tokenizer,
            "batch_size": self.config.accuracy.batch_size,
            "device": self.point.hardware_spec.torch_device,
        }
        if self.point.draft_spec.kind == "none":
            return HFLM(**kw)
        return DraftedHFLM(draft_kwargs=self._draft_kwargs(), **kw)

    def context_tokens(self) -> int | None:
        n = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(n) if n else None

    def weight_bytes(self) -> int:
        return _streamed_bytes(self.model, self.point.quantization)

    def draft_weight_bytes(self) -> int:
        d = self.point.draft_spec
        if d.kind == "model":
            return _streamed_bytes(self.draft_model, "")  # the assistant runs unquantized, in the trial's dtype
        if d.kind == "early_exit":  # the first K layers, then the final norm and lm_head
            return _streamed_bytes(self.model, self.point.quantization, below_layer=d.n)
        return 0

    def close(self) -> None:
        self.model = None
        self.draft_model = None


ENGINE = TransformersEngine
