"""lm-eval's HF model on the trial's loaded transformers model, generating with the trial's draft.

Log-likelihood requests score the target alone (a draft never changes them). Generation
(`generate_until`) of a drafted trial runs the same assisted generation the trial was timed with
(an assistant model, early exit or prompt lookup: `draft_kwargs`), so a generative task scores
the tokens the drafted configuration produces. transformers' assisted generation takes one
sequence at a time, so a drafted trial's generation runs at batch 1 whatever accuracy.batch_size
says (log-likelihood batches keep it).
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM


class DraftedHFLM(HFLM):
    def __init__(self, *, draft_kwargs: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.draft_kwargs = dict(draft_kwargs)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        batch = self.batch_size
        self.batch_size_per_gpu = 1  # assisted generation is batch 1 only
        try:
            return list(super().generate_until(requests, disable_tqdm=disable_tqdm))
        finally:
            self.batch_size_per_gpu = batch

    def _model_generate(self, context: Any, max_length: int, stop: list[str], **generation_kwargs: Any) -> Any:
        return super()._model_generate(context, max_length, stop, **generation_kwargs, **self.draft_kwargs)
