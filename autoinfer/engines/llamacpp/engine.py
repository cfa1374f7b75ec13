"""The llama.cpp engine: GGUF quantization levels, B sequences decoded together, drafts.

- Levels (F16, Q8_0, ..., Q4_0) are made from the source GGUF by llama.cpp's quantizer; an HF
  checkpoint is first converted to an unquantized GGUF by llama.cpp's converter (llamacpp/convert.py).
- Batch: B prompts are decoded as B sequence ids of one context: one llama_decode per step
  carries one token of every live sequence (continuous batching, not B sequential calls).
- Drafts, at any batch size: prompt lookup (n-gram match in each sequence's history) or a draft
  model (any source as a GGUF, optionally quantized to its own level, or the target itself at a
  lower level, `model:Q4_0`) that drafts for every live sequence in one llama_decode per step in
  its own context. All sequences' drafts are verified greedily in one target llama_decode; each
  sequence's rejected tokens are removed from both contexts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from autoinfer.cache import file_digest
from autoinfer.engines.base import Engine, GenerationResult, NewTokens, StepCallback
from autoinfer.engines.llamacpp.convert import base_type, converted_gguf, gguf_of_source, local_checkpoint
from autoinfer.engines.llamacpp.levels import quantized_gguf, source_level
from autoinfer.engines.llamacpp.runtime import LlamaRuntime
from autoinfer.engines.sources import gguf_path
from autoinfer.errors import TrialError

PER_SEQUENCE_CTX = 1024  # KV cells per sequence beyond max_new_tokens (builtin:code prompts are ~400)
# Text whose tokens test whether a batched pass gives the logits of one-token passes.
BATCH_PROBE = "The quick brown fox jumps over the lazy dog, because it wants to see the other side of the hill. " * 2


def lookup_draft(history: list[int], n: int, ngram: int = 3) -> list[int]:
    """Prompt lookup: find the latest earlier occurrence of the history's last `ngram` (then fewer)
    tokens, and propose the n that followed it."""
    for size in range(min(ngram, len(history) - 1), 0, -1):
        tail = history[-size:]
        for start in range(len(history) - size - 1, -1, -1):
            if history[start : start + size] == tail:
                follow = history[start + size : start + size + n]
                if follow:
                    return follow
    return []


class LlamaCppEngine(Engine):
    rt: LlamaRuntime
    draft_rt: LlamaRuntime | None = None

    def load(self) -> None:
        hw = self.point.hardware_spec
        threads = hw.threads
        src, path = self._prepare_gguf(threads)
        self.on_stage("load")
        gpu_layers = -1 if hw.kind == "cuda" else 0  # everything offloaded where a GPU exists
        main_gpu = (hw.index or 0) if hw.kind == "cuda" else 0
        n_seq = self.point.batch_size
        # KV cells: each sequence has its own stream of n_ctx / n_seq cells (a multiple, as llama.cpp asks).
        self.n_ctx = n_seq * max(-(-2048 // n_seq), PER_SEQUENCE_CTX + self.config.workload.max_new_tokens)
        self.rt = LlamaRuntime(path, self.n_ctx, n_seq, threads, gpu_layers, main_gpu)
        self.formatter = self._chat_formatter()
        d = self.point.draft_spec
        self.draft_k = self.point.draft_tokens  # tokens proposed per verification (prompt_lookup:N: N)
        self.draft_width = self.draft_k if d.kind != "none" else 0
        if d.kind != "none":
            self._match_pass_sizes(path, n_seq, threads, gpu_layers, main_gpu)
        self.info["repack"] = self.rt.repack
        if d.kind == "model":
            self.on_stage("prepare")
            draft_path = self._draft_path(src, threads)
            self.on_stage("load")
            self.draft_rt = LlamaRuntime(draft_path, self.n_ctx, n_seq, threads, gpu_layers, main_gpu)
            if self.draft_rt.n_vocab != self.rt.n_vocab:
                raise TrialError(f"draft {d} has a vocabulary of {self.draft_rt.n_vocab}, target {self.rt.n_vocab}")
            self.info.update(
                draft_gguf_path=str(draft_path),
                draft_gguf_sha256=file_digest(draft_path),
                draft_gguf_bytes=draft_path.stat().st_size,
                draft_level=d.level or (d.model if d.target_level else source_level(draft_path)),
            )
        self.info["llama_threads"] = threads
        self.info["n_ctx"] = self.n_ctx
        self.info["kv_unified"] = False  # one KV stream per sequence (LlamaRuntime)
        self.info["n_gpu_layers"] = gpu_layers
        self.info["main_gpu"] = main_gpu
        self.info["draft_tokens_per_step"] = self.draft_k

    def _prepare_gguf(self, threads: int) -> tuple[Path, Path]:
        """(the source GGUF, the GGUF at the trial's level), made and cached where needed."""
        src = gguf_path(self.config)
        self.on_stage("prepare")
        if src is None:  # an HF checkpoint: one unquantized GGUF first, the levels from it
            checkpoint = local_checkpoint(self.config)
            src, facts = converted_gguf(checkpoint, base_type(checkpoint, self.point.quantization))
            self.info.update(facts)
        path, facts = quantized_gguf(src, self.point.quantization, threads)
        self.info.update(facts)
        self.info["gguf_file_bytes"] = path.stat().st_size
        self.info["gguf_path"] = str(path)  # what `autoinfer export` tells users to ship
        self.info["gguf_sha256"] = file_digest(path)
        self.info["llama_cpp_python"] = metadata.version("llama_cpp_python")
        return src, path

    def _match_pass_sizes(self, path: Path, n_seq: int, threads: int, gpu_layers: int, main_gpu: int) -> None:
        """Load the target so that a drafted pass rounds as a plain one, where a load setting can.

        A verification evaluates up to draft_k + 1 tokens of each sequence in one pass; plain
        decoding one token of each. Where the repacked kernels round those pass sizes differently,
        drafted output would drift from plain greedy output, so the target is loaded without
        repacking if that makes them agree (measured, not assumed). Where no load does, the shift
        is recorded and the lossless check judges each divergence.
        """
        probe = self.rt.tokenize(BATCH_PROBE)
        widths = range(2, self.draft_k + 2)
        shift = self.rt.batch_shift(probe, widths, n_seq)
        if shift > 0:
            unpacked = LlamaRuntime(path, self.n_ctx, n_seq, threads, gpu_layers, main_gpu, repack=False)
            unpacked_shift = unpacked.batch_shift(probe, widths, n_seq)
            self.info["batch_shift_with_repack"] = shift
            if unpacked_shift < shift:
                self.rt.close()
                self.rt, shift = unpacked, unpacked_shift
            else:
                unpacked.close()
        # 0.0: the weight kernels give every pass size the same numbers. The probe is short on
        # purpose: past 256 KV cells llama.cpp's CPU attention also rounds one-token passes
        # differently from many-token ones, which no load setting changes, so there the
        # lossless check judges each divergence.
        self.info["batch_shift"] = shift

    def _draft_path(self, src: Path, threads: int) -> Path:
        """The draft model's GGUF: the target at a level, or any source (at its own level if asked)."""
        d = self.point.draft_spec
        if d.target_level:
            return quantized_gguf(src, d.model, threads)[0]
        path, facts = gguf_of_source(self.config, d.model)
        self.info.update({f"draft_{k}": v for k, v in facts.items()})
        if d.level:
            path, _ = quantized_gguf(path, d.level, threads)
        return path

    def _chat_formatter(self) -> Any:
        """The GGUF's own chat template, rendered the way transformers renders it (jinja2)."""
        template = self.rt.meta("tokenizer.chat_template") if self.config.model.chat_template else None
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = self.rt.token_text(self.rt.ll.llama_vocab_bos(self.rt.vocab))
        return Jinja2ChatFormatter(template, eos_token=self.rt.token_text(self.rt.eos), bos_token=bos)

    def _render(self, prompt: str) -> list[int]:
        if self.formatter is not None:
            text = self.formatter(messages=[{"role": "user", "content": prompt}]).prompt
            return self.rt.tokenize(text, add_special=False)
        return self.rt.tokenize(prompt, add_special=True)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self._render(prompt)

    def text(self, ids: Sequence[int]) -> str:
        return self.rt.detokenize([t for t in ids if not self.rt.is_eog(t)])

    def _stops(self, token: int) -> bool:
        return token in self.stop_tokens or self.rt.is_eog(token)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:  # fmt: skip
        toks = [list(p) for p in prompts]
        self.rt.clear()
        if self.draft_rt is not None:
            self.draft_rt.clear()
        start = time.perf_counter()
        drafting = draft and self.point.draft_spec.kind != "none"
        out: list[list[int]] = [[t] for t in self._prefill(toks, drafting)]
        now = time.perf_counter() - start
        times: list[list[float]] = [[now] for _ in out]
        report = NewTokens(on_step, len(out))
        report(out)
        stats = {"passes": 0, "draft_steps": 0, "proposed": 0, "accepted": 0}

        def done(s: int) -> bool:
            return (self._stops(out[s][-1]) and not ignore_eos) or len(out[s]) >= max_new_tokens

        live = [s for s in range(len(toks)) if not done(s)]
        while live:
            pos = {s: len(toks[s]) + len(out[s]) - 1 for s in live}  # where out[s][-1] goes
            drafts = self._drafts(toks, out, live, pos, max_new_tokens, stats) if drafting else {}
            # One target pass verifies every live sequence: its last token, then its draft.
            items = []
            for s in live:
                items += [(out[s][-1], pos[s], s, True)]
                items += [(t, pos[s] + 1 + i, s, True) for i, t in enumerate(drafts.get(s, []))]
            rows = self.rt.decode(items)
            stats["passes"] += 1
            now = time.perf_counter() - start
            r = 0
            caught_up = []
            for s in live:
                d = drafts.get(s, [])
                got = self._take_verified(rows[r : r + len(d) + 1], d, out[s], times[s], now, partial(done, s))
                r += len(d) + 1
                if d:
                    stats["proposed"] += len(d)
                    stats["accepted"] += got
                    self.rt.truncate(s, pos[s] + got + 1)  # drop KV of this sequence's rejected draft
                    if self.draft_rt is not None:
                        self.draft_rt.truncate(s, pos[s] + got + 1)
                        if got == len(d):  # the draft never evaluated its own last proposal
                            caught_up.append((d[-1], pos[s] + len(d), s, False))
            if caught_up:
                assert self.draft_rt is not None
                self.draft_rt.decode(caught_up)
                stats["draft_steps"] += 1
            report(out)
            live = [s for s in live if not done(s)]
        total = time.perf_counter() - start
        return GenerationResult(
            tuple(map(tuple, out)), tuple(map(tuple, times)), total, stats["passes"], stats["draft_steps"],
            stats["proposed"], stats["accepted"],
        )  # fmt: skip

    def _prefill(self, toks: list[list[int]], drafting: bool) -> list[int]:
        """Every prompt in one batch, logits only at each one's last token (the draft model, when
        drafting, keeps the same histories); each sequence's first generated token."""
        rows = self.rt.decode([(t, p, s, p == len(q) - 1) for s, q in enumerate(toks) for p, t in enumerate(q)])
        if drafting and self.draft_rt is not None:
            self.draft_rt.decode([(t, p, s, False) for s, q in enumerate(toks) for p, t in enumerate(q)])
        return [self.rt.argmax(r) for r in rows]

    def _take_verified(
        self,
        rows: Sequence[int],
        draft: Sequence[int],
        out: list[int],
        times: list[float],
        now: float,
        done: Callable[[], bool],
    ) -> int:
        """Append what one verification pass emitted for one sequence (`rows`: its logits rows, the
        last token's then each draft token's): the target's tokens up to its first disagreement with
        the draft, or a stop. Returns how many draft tokens were accepted."""
        got = 0
        for i in range(len(draft) + 1):
            t = self.rt.argmax(rows[i])
            out.append(t)
            times.append(now)  # every token this pass emitted is out now
            if i == len(draft) or t != draft[i] or done():
                break
            got += 1
        return got

    def _drafts(
        self,
        toks: list[list[int]],
        out: list[list[int]],
        live: list[int],
        pos: dict[int, int],
        max_new: int,
        stats: dict[str, int],
    ) -> dict[int, list[int]]:
        """Each live sequence's draft, at most draft_k tokens and never past max_new."""
        room = {s: min(self.draft_k, max_new - len(out[s])) for s in live}
        spec = self.point.draft_spec
        if self.draft_rt is None:  # prompt lookup, in each sequence's own history
            return {s: lookup_draft(toks[s] + out[s], room[s], spec.ngram) for s in live}
        drafts: dict[int, list[int]] = {s: [] for s in live}
        current = {s: out[s][-1] for s in live}
        going = [s for s in live if room[s] > 0]
        while going:  # one draft pass per step, for every sequence still drafting
            rows = self.draft_rt.decode([(current[s], pos[s] + len(drafts[s]), s, True) for s in going])
            stats["draft_steps"] += 1
            for s, row in zip(going, rows, strict=True):
                current[s] = self.draft_rt.argmax(row)
                drafts[s].append(current[s])
            going = [s for s in going if len(drafts[s]) < room[s]]
        return drafts

    def score_facts(self) -> dict[str, Any]:
        return {"repack": self.rt.repack}

    def next_token_logits(self, prompt: str, prefix: Sequence[int], width: int, batch: int = 1) -> np.ndarray[Any, Any]:
        toks = self._render(prompt)
        seqs = range(batch)  # copies of the sequence: passes of the sizes a batch of B runs
        self.rt.clear()
        if width == 0:  # everything in one pass
            seq = toks + list(prefix)
            rows = self.rt.decode([(t, p, s, p == len(seq) - 1) for s in seqs for p, t in enumerate(seq)])
            return self.rt.logits(rows[0]).copy()
        rows = self.rt.decode([(t, p, s, p == len(toks) - 1) for s in seqs for p, t in enumerate(toks)])
        row, pos = rows[0], len(toks)
        for t in prefix[:-1]:  # one token per sequence per pass, as plain decoding does
            row = self.rt.decode([(t, pos, s, True) for s in seqs])[0]
            pos += 1
        if prefix:  # the last one first in a pass of `width` tokens per sequence, as in a verification
            row = self.rt.decode([(prefix[-1], pos + i, s, True) for s in seqs for i in range(width)])[0]
        return self.rt.logits(row).copy()

    def verify_pass_shapes(self) -> tuple[tuple[int, int], ...]:
        # Besides verifications of k + 1 tokens: the whole sequence in one pass. No drafted pass
        # evaluates a prompt differently from plain decoding, but a drafted sequence's history (its
        # accepted tokens) was evaluated in verification passes of many tokens, and its KV cache
        # differs from plain decoding's one-token history; the other shapes feed the history one
        # token per pass and miss that. SmolLM2 Q4_K_M repacked, batch 4, model:Q4_0: the real
        # drafted passes put two prompts' margins at -0.010 and -0.249 where plain decoding had
        # +0.227 and +0.058; the whole sequence in one pass gave exactly -0.010 and -0.249, while
        # k + 1 tokens after a one-token history moved them by 0.024 and 0.013 at most.
        # At batch > 1 a verification holds any number of tokens (sequences end, prompt lookup
        # proposes fewer or none), and some kernels take another path for the tokens past a
        # multiple of 4 (Gemma-3 Q4_K_M repacked, batch 8, AVX2: a 9-token pass moved a logit by
        # 1.2 from the 8-token pass, while passes of 8, 32 and 8 x prompt tokens agreed exactly):
        # passes of one sequence, of k + 1 tokens and of 1, show that path.
        batch = self.point.batch_size
        return (*super().verify_pass_shapes(), (0, batch), *(((1, 1),) if batch > 1 else ()))

    def lm_eval_model(self) -> Any:
        from autoinfer.engines.llamacpp.lm import LlamaCppLM

        return LlamaCppLM(self.rt, batch_size=self.config.accuracy.batch_size)

    def context_tokens(self) -> int | None:
        return self.n_ctx // self.point.batch_size  # each sequence has a KV stream of its own

    def weight_bytes(self) -> int:
        # llama_model_size: bytes of all weight tensors at their stored (quantized) types.
        return self.rt.model_bytes()

    def draft_weight_bytes(self) -> int:
        return self.draft_rt.model_bytes() if self.draft_rt is not None else 0

    def close(self) -> None:
        self.rt.close()
        if self.draft_rt is not None:
            self.draft_rt.close()


ENGINE = LlamaCppEngine
