"""lm-eval on a loaded llama.cpp model: the exact quantized GGUF under test is what gets scored."""

from __future__ import annotations

from typing import Any

import numpy as np
from lm_eval.api.model import TemplateLM

from autoinfer.engines.llamacpp.runtime import LlamaRuntime


def _log_softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class LlamaCppLM(TemplateLM):
    def __init__(self, rt: LlamaRuntime, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.rt = rt
        self.max_gen_toks = max_gen_toks

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

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            limit = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            toks = self.tok_encode(context, add_special_tokens=True)[-(self.rt.n_ctx - limit) :]
            self.rt.clear()
            (row,) = self.rt.decode([(t, p, 0, p == len(toks) - 1) for p, t in enumerate(toks)])
            out: list[int] = []
            text = ""
            while len(out) < limit:
                t = self.rt.argmax(row)
                if self.rt.is_eog(t):
                    break
                out.append(t)
                text = self.rt.detokenize(out)
                if any(u in text for u in until):
                    break
                (row,) = self.rt.decode([(t, len(toks) + len(out) - 1, 0, True)])
            for u in until:
                text = text.split(u)[0]
            results.append(text)
        return results
