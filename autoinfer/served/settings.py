"""The served workload's YAML (`workload.mode: served`, `workload.served: {...}`): how many
requests, how they arrive, and the per-request latency limits a good request meets.

Pydantic models only (imported by `autoinfer.config`, the lowest layer): nothing here imports the
load generator or a server.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SloConfig(_Strict):
    """Per-request limits in seconds, as vLLM's goodput counts them: a request is good when it
    completed and meets every limit that is set (TPOT: (E2EL - TTFT) / (output tokens - 1))."""

    ttft_s: float | None = Field(None, gt=0, le=3600)
    tpot_s: float | None = Field(None, gt=0, le=3600)
    e2el_s: float | None = Field(None, gt=0, le=86400)


class ServedConfig(_Strict):
    """One load point: `requests` measured requests (after `warmup_requests` unmeasured ones),
    arriving at `request_rate` requests/s (`inf`: all at once) with `burstiness` (1: Poisson, below
    1 burstier), or kept at `concurrency` in flight; each asks for `workload.max_new_tokens` tokens
    of the workload's prompts, sent as raw text to `/v1/completions`."""

    requests: int = Field(32, ge=1, le=100000)
    warmup_requests: int = Field(2, ge=0, le=1000)
    # req/s, a positive number or "inf"; not set (and no concurrency): inf.
    request_rate: float | Literal["inf"] | None = None
    burstiness: float = Field(1.0, gt=0, le=100)
    concurrency: int | None = Field(None, ge=1, le=100000)
    slo: SloConfig = SloConfig()
    # Seconds the server may take to answer /health after it starts (vLLM: 30-115 s here).
    startup_timeout_s: float = Field(600.0, gt=0, le=7200)
    # Seconds the whole load may take, warm-up included; past it the trial fails.
    timeout_s: float = Field(1800.0, gt=0, le=86400)

    @field_validator("request_rate")
    @classmethod
    def _positive_rate(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float | int) and not v > 0:
            raise ValueError(f"must be a positive number of requests/s or 'inf', not {v}")
        return v

    @model_validator(mode="after")
    def _rate_or_concurrency(self) -> ServedConfig:
        if self.request_rate is not None and self.concurrency is not None:
            raise ValueError("set request_rate or concurrency, not both (a rate with a cap is not one load point)")
        return self

    @property
    def rate(self) -> float:
        """Requests/s the generator sends at (inf: all at once, or as `concurrency` admits)."""
        if self.request_rate is None or self.request_rate == "inf":
            return math.inf
        return float(self.request_rate)

    def label(self) -> str:
        """The load point in words, for labels and logs."""
        if self.concurrency is not None:
            return f"concurrency {self.concurrency}"
        return f"{self.rate:g} req/s" + (f" burstiness {self.burstiness:g}" if self.burstiness != 1 else "")


Mode = Literal["offline", "served"]
