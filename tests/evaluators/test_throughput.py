from __future__ import annotations

from typing import Any

import pytest

from autoinfer.engines import GenerationResult, TrialPoint
from autoinfer.evaluators.energy import CpuTimeEstimate
from autoinfer.evaluators.throughput import measure_throughput, percentile
from autoinfer.evaluators.workload import BUILTIN_CHAT, batch_for_repeat, load_prompts


class FakeEngine:
    """Deterministic timings: sequence i of a batch yields 4+i tokens, 10 ms per token."""

    def __init__(self, draft: str = "none") -> None:
        self.point = TrialPoint("transformers", "fp32", draft, 2, "cpu:1")
        self.calls: list[list[str]] = []

    def generate(self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False) -> GenerationResult:
        self.calls.append(prompts)
        n = tuple(4 + i for i in range(len(prompts)))
        return GenerationResult(
            new_tokens=n, ttft_s=0.01, latency_s=tuple(0.01 * k for k in n), total_s=0.01 * max(n),
            draft_proposed=10, draft_accepted=4,
        )  # fmt: skip


def test_percentile() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4, 5], 100) == 5


def test_tokens_are_counted_not_assumed_and_warmup_excluded() -> None:
    eng: Any = FakeEngine()
    r = measure_throughput(eng, ["a", "b", "c"], 2, 64, repeats=3, warmup=2, meter=CpuTimeEstimate(10))
    assert len(eng.calls) == 5  # 2 warmup + 3 measured
    assert r.generated_tokens == 3 * (4 + 5)  # counted from outputs, never 3 x 2 x 64
    assert r.tokens_per_s == pytest.approx(27 / (3 * 0.05))
    assert r.tokens_per_s_cv == pytest.approx(0.0)
    assert r.ttft_p50_s == pytest.approx(0.01)
    assert r.tpot_p50_s == pytest.approx(0.01)
    assert r.latency_p95_s == pytest.approx(0.05)
    assert r.sequences == 6 and r.repeats == 3
    assert r.acceptance_rate is None  # no draft ran
    assert r.energy.source == "estimated:cpu-time"
    assert r.peak_memory_gb > 0


def test_acceptance_rate_for_drafted_trials() -> None:
    eng: Any = FakeEngine("prompt_lookup:3")
    r = measure_throughput(eng, ["a"], 2, 8, repeats=2, warmup=0, meter=CpuTimeEstimate(10))
    assert r.acceptance_rate == pytest.approx(0.4)
    assert (r.draft_proposed, r.draft_accepted) == (20, 8)


def test_repeats_walk_through_the_prompt_set(tmp_path: Any) -> None:
    assert batch_for_repeat(["a", "b", "c"], 2, 0) == ["a", "b"]
    assert batch_for_repeat(["a", "b", "c"], 2, 1) == ["c", "a"]
    assert load_prompts("builtin:chat", tmp_path) == BUILTIN_CHAT
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hi"}\n\n{"prompt": "there"}\n')
    assert load_prompts("p.jsonl", tmp_path) == ["hi", "there"]
