"""lm-eval on a loaded llama.cpp model: the exact quantized GGUF under test is what gets scored.

Log-likelihoods are scored one request at a time in the trial's own context (sequence 0).
Generation (`generate_until`) runs in a context of its own on the same loaded model, with
`batch_size` sequences decoded together: its shape then depends on the eval alone, never on the
trial's batch size (whose context has batch-size sequences of n_ctx / batch-size cells each, too
few for an 8-shot GSM8K prompt at batch 4 and up).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM

from autoinfer.engines.llamacpp.runtime import LlamaRuntime
from autoinfer.errors import TrialError

CELL_STEP = 256  # a generation context's KV cells per sequence are a multiple of this
STOP_WINDOW = 64  # tokens searched for a stop string after each new one (stop strings are shorter)


def _log_softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own
    (the one whose logits start its generation); 0 for fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class LlamaCppLM(TemplateLM):
    def __init__(self, rt: LlamaRuntime, max_gen_toks: int = 256, batch_size: int = 16) -> None:
        super().__init__()
        self.rt = rt
        self.max_gen_toks = max_gen_toks
        # Sequences generated together (the default is accuracy.batch_size's default).
        self.batch_size = max(1, int(batch_size))

    @property
    def eot_token_id(self) -> int:
        return int(self.rt.eos)

    @property
    def prefix_token_id(self) -> int:
        # What an empty context is conditioned on: BOS for models that start with it (Gemma), as HFLM does.
        return int(self.rt.bos) if self.rt.add_bos else int(self.rt.eos)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # None (lm-eval's default) = the model's own rule, as the HF tokenizer applies it: llama.cpp
        # adds BOS only where the GGUF says add_bos_token (Gemma yes, SmolLM2 no).
        return self.rt.tokenize(string, add_special=True if add_special_tokens is None else add_special_tokens)

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it."""
        tokens = (context + continuation)[-self.rt.n_ctx :]  # keep the tail if it does not fit
        first = len(tokens) - len(continuation)  # index of the first continuation token
        self.rt.clear()
        rows = self.rt.decode([(t, p, 0, p >= first - 1 and p < len(tokens) - 1) for p, t in enumerate(tokens)])
        total, greedy = 0.0, True
        for row, target in zip(rows, continuation, strict=True):
            logits = self.rt.logits(row)
            total += float(_log_softmax(logits)[target])
            greedy &= int(np.argmax(logits)) == target
        return total, greedy

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
        return [self._score(ctx, cont) for _, ctx, cont in requests]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            total, _ = self._score([self.prefix_token_id], self.tok_encode(text, add_special_tokens=False))
            out.append(total)
        return out

    def _generation_runtime(self, n_seq: int, cells: int) -> LlamaRuntime:
        """A second context on the loaded model: n_seq sequences of `cells` KV cells each, in
        streams of their own (as the trial's), the trial's thread counts. Free it with _free."""
        ll = self.rt.ll
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_seq * cells
        cp.n_batch = cp.n_ctx  # every admitted prompt fits one llama_decode
        cp.n_ubatch = min(cp.n_ctx, 512)
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = ll.llama_n_threads(self.rt.ctx)
        cp.n_threads_batch = ll.llama_n_threads_batch(self.rt.ctx)
        ctx = ll.llama_init_from_model(self.rt.model, cp)
        if not ctx:
            raise TrialError(f"llama.cpp could not create a generation context of {n_seq} x {cells} cells")
        rt = copy.copy(self.rt)  # the same model and vocabulary, this context
        rt.ctx, rt.n_ctx, rt.n_batch = ctx, cells, cp.n_ctx
        rt.mem = ll.llama_get_memory(ctx)
        rt.batch = ll.llama_batch_init(cp.n_ctx, 0, n_seq)
        return rt

    def _free(self, rt: LlamaRuntime) -> None:
        rt.ll.llama_batch_free(rt.batch)
        rt.ll.llama_free(rt.ctx)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation for every request, `batch_size` sequences at a time.

        Continuous batching in a generation context of its own: each request takes a sequence id
        (its own KV stream), one llama_decode per step carries the prompt of every request just
        admitted and the last token of every live one, and a finished request's sequence is cleared
        and given to the next, longest prompts first. The prompts' common prefix (a task's few-shot
        examples) is evaluated once and copied to every sequence. A request stops at end-of-generation, at one
        of its `until` strings (cut off, with what follows) or at its max_gen_toks. A prompt longer
        than the model's training context less max_gen_toks keeps its tail, as lm-eval's HFLM does.
        """
        if not requests:
            return []
        train = int(self.rt.ll.llama_model_n_ctx_train(self.rt.model)) or 4096
        jobs = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = max(1, min(int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), train // 2))
            toks = self.tok_encode(context, add_special_tokens=True)[-(train - limit) :] or [self.prefix_token_id]
            jobs.append((toks, until, limit))
        n_seq = min(self.batch_size, len(jobs))
        need = max(len(toks) + limit for toks, _, limit in jobs)
        rt = self._generation_runtime(n_seq, -(-need // CELL_STEP) * CELL_STEP)
        from tqdm import tqdm

        # Items done per second on the progress bar: a 200-item code eval takes minutes a level.
        bar = tqdm(total=len(jobs), desc="generate_until (llama.cpp)", unit="item", disable=disable_tqdm)
        try:
            return self._generate(rt, jobs, n_seq, bar.update)
        finally:
            bar.close()
            self._free(rt)

    @staticmethod
    def _generate(
        rt: LlamaRuntime, jobs: list[tuple[list[int], list[str], int]], n_seq: int, done: Callable[[int], Any]
    ) -> list[str]:
        results = [""] * len(jobs)
        out: dict[int, list[int]] = {}  # sequence id -> tokens generated so far
        req_of: dict[int, int] = {}  # sequence id -> request index
        # Longest prompts first, as lm-eval's own models order them; pop() takes from the end.
        waiting = sorted(range(len(jobs)), key=lambda i: (len(jobs[i][0]), -i))
        items: list[tuple[int, int, int, bool]] = []  # the next llama_decode
        seqs: list[int] = []  # the sequence of each logits row it returns, in order

        # The prompts' common prefix (the few-shot examples) is evaluated once, in sequence 0, and
        # copied to every other sequence's stream; a request then evaluates only the rest of its
        # prompt, and a finished request's sequence keeps the prefix for the next.
        shared = common_prefix([toks for toks, _, _ in jobs])
        if shared:
            rt.decode([(t, p, 0, False) for p, t in enumerate(jobs[0][0][:shared])])
            for s in range(1, n_seq):
                rt.ll.llama_memory_seq_cp(rt.mem, 0, s, -1, -1)

        def admit(s: int) -> None:
            i = waiting.pop()
            req_of[s], out[s] = i, []
            toks = jobs[i][0]
            items.extend((toks[p], p, s, p == len(toks) - 1) for p in range(shared, len(toks)))
            seqs.append(s)

        for s in range(n_seq):
            admit(s)
        while items:
            rows = rt.decode(items)
            step = list(zip(seqs, rows, strict=True))
            items.clear()
            seqs.clear()
            for s, row in step:
                i = req_of[s]
                toks, until, limit = jobs[i]
                t = rt.argmax(row)
                finished = rt.is_eog(t)
                if not finished:
                    out[s].append(t)
                    # A stop string ends in the newest token, or an earlier step would have seen it.
                    tail = rt.detokenize(out[s][-STOP_WINDOW:])
                    finished = len(out[s]) >= limit or any(u in tail for u in until)
                if not finished:
                    items.append((t, len(toks) + len(out[s]) - 1, s, True))
                    seqs.append(s)
                    continue
                text = rt.detokenize(out[s])
                for u in until:
                    text = text.split(u)[0]
                results[i] = text
                done(1)
                del req_of[s], out[s]
                rt.truncate(s, shared)  # the sequence's stream keeps the shared prefix for the next request
                if waiting:
                    admit(s)
        return results
