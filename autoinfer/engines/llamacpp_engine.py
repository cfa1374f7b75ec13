"""The llama.cpp engine: GGUF quantization levels, B sequences decoded together, drafts.

- Levels (F16, Q8_0, ..., Q4_0) are made from the source GGUF by llama.cpp's quantizer; an HF
  checkpoint is first converted to an unquantized GGUF by llama.cpp's converter (gguf_convert).
- Batch: B prompts are decoded as B sequence ids of one context: one llama_decode per step
  carries one token of every live sequence (continuous batching, not B sequential calls).
- Drafts (batch size 1): prompt lookup (n-gram match in the history) or a draft GGUF (a file, or
  a lower level of the target itself, `model:Q4_0`), verified greedily in one llama_decode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from autoinfer.cache import file_digest
from autoinfer.engines.base import Engine, GenerationResult
from autoinfer.engines.gguf_convert import base_type, converted_gguf, local_checkpoint
from autoinfer.engines.gguf_levels import LEVELS, quantized_gguf
from autoinfer.engines.llamacpp_runtime import LlamaRuntime
from autoinfer.engines.sources import gguf_path, resolve_source
from autoinfer.errors import TrialError

PER_SEQUENCE_CTX = 512  # KV cells per sequence beyond max_new_tokens (chat prompts are ~50 tokens)
MAX_NGRAM = 3  # prompt lookup matches the longest of the last 3..1 tokens
DRAFT_MODEL_TOKENS = 4  # tokens a draft GGUF proposes per verification step
# Text whose tokens test whether a batched pass gives the logits of one-token passes.
BATCH_PROBE = "The quick brown fox jumps over the lazy dog, because it wants to see the other side of the hill."


def lookup_draft(history: list[int], n: int) -> list[int]:
    """Prompt lookup: find the latest earlier occurrence of the history's tail, propose what followed."""
    for size in range(min(MAX_NGRAM, len(history) - 1), 0, -1):
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
        src = gguf_path(self.config)
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
        gpu_layers = -1 if hw.kind == "cuda" else 0  # everything offloaded where a GPU exists
        main_gpu = (hw.index or 0) if hw.kind == "cuda" else 0
        n_seq = self.point.batch_size
        self.n_ctx = max(2048, n_seq * (PER_SEQUENCE_CTX + self.config.workload.max_new_tokens))
        self.rt = LlamaRuntime(path, self.n_ctx, n_seq, threads, gpu_layers, main_gpu)
        self.formatter = self._chat_formatter()
        d = self.point.draft_spec
        # Tokens proposed per verification step: prompt_lookup:N says N; a draft GGUF proposes a fixed number.
        self.draft_k = DRAFT_MODEL_TOKENS if d.kind == "model" else d.n
        self.draft_width = self.draft_k if d.kind != "none" else 0
        if d.kind != "none":
            # A verification evaluates draft_k + 1 tokens in one pass; plain decoding one. Where the
            # repacked kernels round those differently, drafted output would drift from plain
            # greedy output, so the target is loaded without repacking (measured, not assumed).
            probe = self.rt.tokenize(BATCH_PROBE)
            shift = self.rt.batch_shift(probe, self.draft_k + 1)
            if shift > 0:
                self.rt.close()
                self.rt = LlamaRuntime(path, self.n_ctx, n_seq, threads, gpu_layers, main_gpu, repack=False)
                self.info["batch_shift_with_repack"] = shift
                shift = self.rt.batch_shift(probe, self.draft_k + 1)
            self.info["batch_shift"] = shift  # 0.0: verification is exactly plain decoding
        self.info["repack"] = self.rt.repack
        if d.kind == "model":
            draft_path = self._draft_path(d.model, src, threads)
            self.info["draft_gguf_path"] = str(draft_path)
            self.draft_rt = LlamaRuntime(draft_path, self.n_ctx, 1, threads, gpu_layers, main_gpu)
            if self.draft_rt.n_vocab != self.rt.n_vocab:
                raise TrialError(
                    f"draft {d.model} has a vocabulary of {self.draft_rt.n_vocab}, target {self.rt.n_vocab}"
                )
        self.info["llama_threads"] = threads
        self.info["n_ctx"] = self.n_ctx
        self.info["n_gpu_layers"] = gpu_layers
        self.info["main_gpu"] = main_gpu
        self.info["draft_tokens_per_step"] = self.draft_k

    def _draft_path(self, spec: str, src: Path, threads: int) -> Path:
        if spec in LEVELS:
            path, _ = quantized_gguf(src, spec, threads)
            return path
        p = Path(resolve_source(self.config, spec))
        if not p.is_file():
            raise TrialError(f"draft GGUF {spec!r} not found (give a level such as Q4_0 or a .gguf path)")
        return p

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

    def _stops(self, token: int) -> bool:
        return token in self.stop_tokens or self.rt.is_eog(token)

    def generate(
        self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True
    ) -> GenerationResult:
        toks = [self._render(p) for p in prompts]
        self.rt.clear()
        if self.draft_rt is not None:
            self.draft_rt.clear()
        start = time.perf_counter()
        if draft and self.point.draft_spec.kind != "none":
            if len(prompts) != 1:
                raise TrialError("llama.cpp drafts run at batch size 1")
            return self._generate_drafted(toks[0], max_new_tokens, ignore_eos, start)
        # Prompt: every sequence's tokens in one batch; logits only at each sequence's last token.
        items = [(t, pos, s, pos == len(seq) - 1) for s, seq in enumerate(toks) for pos, t in enumerate(seq)]
        rows = self.rt.decode(items)
        now = time.perf_counter() - start
        out: list[list[int]] = [[self.rt.argmax(r)] for r in rows]
        times: list[list[float]] = [[now] for _ in rows]
        live = [s for s, o in enumerate(out) if not ((self._stops(o[0]) and not ignore_eos) or max_new_tokens == 1)]
        passes = 0
        while live:
            rows = self.rt.decode([(out[s][-1], len(toks[s]) + len(out[s]) - 1, s, True) for s in live])
            passes += 1
            now = time.perf_counter() - start
            still = []
            for s, r in zip(live, rows, strict=True):
                t = self.rt.argmax(r)
                out[s].append(t)
                times[s].append(now)
                if not ((self._stops(t) and not ignore_eos) or len(out[s]) >= max_new_tokens):
                    still.append(s)
            live = still
        total = time.perf_counter() - start
        return GenerationResult(tuple(map(tuple, out)), tuple(map(tuple, times)), total, target_passes=passes)

    def _generate_drafted(self, prompt: list[int], max_new: int, ignore_eos: bool, start: float) -> GenerationResult:
        rt, drt = self.rt, self.draft_rt
        rows = rt.decode([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        if drt is not None:  # the draft model keeps the same history in its own context
            drt.decode([(t, p, 0, False) for p, t in enumerate(prompt)])
        out = [rt.argmax(rows[0])]
        times = [time.perf_counter() - start]
        proposed = accepted = passes = draft_steps = 0
        while len(out) < max_new and (ignore_eos or not self._stops(out[-1])):
            pos = len(prompt) + len(out) - 1  # where out[-1] goes; it is not in the KV yet
            room = max_new - len(out)
            if drt is None:
                draft = lookup_draft(prompt + out, min(self.draft_k, room))
            else:
                draft = self._draft_model_tokens(drt, out[-1], pos, min(self.draft_k, room))
                draft_steps += len(draft)
            rows = rt.decode([(out[-1], pos, 0, True)] + [(t, pos + 1 + i, 0, True) for i, t in enumerate(draft)])
            passes += 1
            now = time.perf_counter() - start
            got = 0
            for i, r in enumerate(rows):
                t = rt.argmax(r)
                out.append(t)
                times.append(now)  # every token this verification emitted is out now
                if i == len(draft) or t != draft[i] or (self._stops(t) and not ignore_eos) or len(out) >= max_new:
                    break
                got += 1
            proposed += len(draft)
            accepted += got
            rt.truncate(0, pos + got + 1)  # drop KV of rejected draft tokens
            if drt is not None:
                drt.truncate(0, pos + got + 1)
                if draft and got == len(draft):  # the draft never evaluated its own last proposal
                    drt.decode([(draft[-1], pos + len(draft), 0, False)])
                    draft_steps += 1
        total = time.perf_counter() - start
        return GenerationResult((tuple(out),), (tuple(times),), total, passes, draft_steps, proposed, accepted)

    @staticmethod
    def _draft_model_tokens(drt: LlamaRuntime, last: int, pos: int, n: int) -> list[int]:
        draft: list[int] = []
        tok = last
        for i in range(n):
            (row,) = drt.decode([(tok, pos + i, 0, True)])
            tok = drt.argmax(row)
            draft.append(tok)
        return draft

    def score_facts(self) -> dict[str, Any]:
        return {"repack": self.rt.repack}

    def next_token_logits(self, prompt: str, prefix: Sequence[int], width: int) -> np.ndarray[Any, Any]:
        toks = self._render(prompt)
        self.rt.clear()
        if width == 0:  # everything in one pass
            seq = toks + list(prefix)
            (row,) = self.rt.decode([(t, p, 0, p == len(seq) - 1) for p, t in enumerate(seq)])
            return self.rt.logits(row).copy()
        rows = self.rt.decode([(t, p, 0, p == len(toks) - 1) for p, t in enumerate(toks)])
        row, pos = rows[0], len(toks)
        for t in prefix[:-1]:  # one token per pass, as plain decoding does
            (row,) = self.rt.decode([(t, pos, 0, True)])
            pos += 1
        if prefix:  # the last one first in a pass of `width` tokens (the rest repeat it), as in a verification
            rows = self.rt.decode([(prefix[-1], pos + i, 0, True) for i in range(width)])
            row = rows[0]
        return self.rt.logits(row).copy()

    def lm_eval_model(self) -> Any:
        from autoinfer.engines.llamacpp_lm import LlamaCppLM

        return LlamaCppLM(self.rt)

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
