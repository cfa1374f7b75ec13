"""The served workload's YAML (`workload.mode: served`, `workload.served: {...}`): how many
requests, how they arrive, and the per-request latency limits a good request meets.

Pydantic models only (imported by `autoinfer.config`, the lowest layer): nothing here imports the
load generator or a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


Rate = float | Literal["inf"]


class ServedConfig(_Strict):
    """The load points: `requests` measured requests (after `warmup_requests` unmeasured ones),
    arriving at `request_rate` requests/s (`inf`: all at once) with `burstiness` (1: Poisson, below
    1 burstier), or kept at `concurrency` in flight; each asks for `workload.max_new_tokens` tokens
    of the workload's prompts, through the server's chat route. A list of rates (or of
    concurrencies) makes the load a searched dimension, like batch size: `load` in a point."""

    requests: int = Field(32, ge=1, le=100000)
    warmup_requests: int = Field(2, ge=0, le=1000)
    # req/s, a positive number or "inf", or a list of them; not set (and no concurrency): inf.
    request_rate: Rate | list[Rate] | None = None
    burstiness: float = Field(1.0, gt=0, le=100)
    concurrency: int | list[int] | None = None
    slo: SloConfig = SloConfig()
    # Server knobs searched beside the batch size, per engine: {vllm: {prefix_caching: [false,
    # true]}} (autoinfer.served.knobs.KNOBS lists them); each sampled only for its engine's points.
    server_knobs: dict[str, dict[str, list[bool | int]]] = {}
    # Seconds the server may take to answer /health after it starts (vLLM: 30-115 s here).
    startup_timeout_s: float = Field(600.0, gt=0, le=7200)
    # Seconds the whole load may take, warm-up included; past it the trial fails.
    timeout_s: float = Field(1800.0, gt=0, le=86400)

    @field_validator("request_rate")
    @classmethod
    def _positive_rate(cls, v: Rate | list[Rate] | None) -> Rate | list[Rate] | None:
        for r in v if isinstance(v, list) else [v]:
            if isinstance(r, float | int) and not r > 0:
                raise ValueError(f"must be a positive number of requests/s or 'inf', not {r}")
        if isinstance(v, list) and not v:
            raise ValueError("an empty list: give at least one rate")
        return v

    @field_validator("concurrency")
    @classmethod
    def _positive_concurrency(cls, v: int | list[int] | None) -> int | list[int] | None:
        for c in v if isinstance(v, list) else [v]:
            if c is not None and not 1 <= c <= 100000:
                raise ValueError(f"must be between 1 and 100000 requests in flight, not {c}")
        if isinstance(v, list) and not v:
            raise ValueError("an empty list: give at least one concurrency")
        return v

    @field_validator("server_knobs", mode="before")
    @classmethod
    def _known_knobs(cls, v: object) -> object:
        from autoinfer.served.knobs import check

        if isinstance(v, dict):
            for engine, knobs in v.items():
                if not isinstance(knobs, dict):
                    raise ValueError(f"{engine}: a mapping of knob -> list of values")
                for knob, values in knobs.items():
                    why = check(str(engine), str(knob), values if isinstance(values, list) else [values])
                    if why:
                        raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _rate_or_concurrency(self) -> ServedConfig:
        if self.request_rate is not None and self.concurrency is not None:
            raise ValueError("set request_rate or concurrency, not both (a rate with a cap is not one load point)")
        return self

    def loads(self) -> list[str]:
        """The load points as a point's `load` values: `rate:R` (req/s, `inf`) or `concurrency:C`."""
        if self.concurrency is not None:
            cs = self.concurrency if isinstance(self.concurrency, list) else [self.concurrency]
            return [f"concurrency:{c}" for c in cs]
        rs = self.request_rate if isinstance(self.request_rate, list) else [self.request_rate or "inf"]
        return [f"rate:{'inf' if r == 'inf' or math.isinf(float(r)) else f'{float(r):g}'}" for r in rs]


@dataclass(frozen=True)
class LoadPoint:
    """One load point, parsed from a point's `load`: a request rate (req/s; inf) or a concurrency."""

    rate: float = math.inf
    concurrency: int | None = None

    @classmethod
    def parse(cls, load: str) -> LoadPoint:
        kind, _, value = load.partition(":")
        if kind == "rate":
            return cls(rate=math.inf if value == "inf" else float(value))
        if kind == "concurrency":
            return cls(concurrency=int(value))
        raise ValueError(f"{load!r} is not a load point (rate:R or concurrency:C)")

    def label(self) -> str:
        return f"{self.concurrency} in flight" if self.concurrency is not None else f"{self.rate:g} req/s"


Mode = Literal["offline", "served"]
