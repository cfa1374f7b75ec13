from __future__ import annotations

from typing import Any

import pytest

from autoinfer.engines import GenerationResult, TrialPoint
from autoinfer.evaluators.energy import CpuTimeEstimate
from autoinfer.evaluators.throughput import measure_throughput, percentile
from autoinfer.evaluators.workload import BUILTIN_CHAT, batches, load_prompts, prompt_set
from tests.fake_engine import _burn


class ScriptedEngine:
    """Sequence i of a batch yields 4+i tokens, one per 10 ms step (drafted: two per step)."""

    def __init__(self, draft: str = "none") -> None:
        self.point = TrialPoint("fake", "fp32", draft, 2, "cpu:1")
        self.calls: list[list[str]] = []

    def generate(self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True) -> Any:
        self.calls.append(prompts)
        _burn(0.001)  # some CPU time, so the energy estimate is not zero
        per_step = 2 if self.point.draft != "none" else 1
        ids = tuple(tuple(range(4 + i)) for i in range(len(prompts)))
        times = tuple(tuple(0.01 * (1 + k // per_step) for k in range(len(s))) for s in ids)
        longest = max(len(s) for s in ids)
        return GenerationResult(
            ids, times, total_s=0.01 * (longest // per_step + 1), target_passes=-(-longest // per_step) - 1,
            draft_proposed=10, draft_accepted=4,
        )  # fmt: skip


def test_percentile() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4, 5], 100) == 5


def test_every_batch_size_generates_the_same_prompt_set() -> None:
    prompts = [f"p{i}" for i in range(6)]
    for b in (1, 2, 4, 6):
        eng: Any = ScriptedEngine()
        r = measure_throughput(eng, prompts, b, 64, repeats=2, warmup=1, meter=CpuTimeEstimate(10))
        measured = eng.calls[1:]  # the first call is the warm-up batch
        assert [p for call in measured for p in call] == prompts * 2  # every prompt, once per repeat
        assert all(len(call) <= b for call in measured)
        assert r.prompts == 6 and r.sequences == 12 and r.repeats == 2


def test_tokens_are_counted_not_assumed_and_warmup_excluded() -> None:
    eng: Any = ScriptedEngine()
    r = measure_throughput(eng, ["a", "b", "c", "d"], 2, 64, repeats=3, warmup=2, meter=CpuTimeEstimate(10))
    assert len(eng.calls) == 2 + 3 * 2  # 2 warm-up batches + 3 passes over 2 batches
    assert r.generated_tokens == 3 * 2 * (4 + 5)  # counted from outputs, never 3 x 4 x 64
    assert r.tokens_per_s == pytest.approx(54 / (6 * 0.06))
    assert r.tokens_per_s_cv == pytest.approx(0.0)  # the same work every repeat
    assert r.ttft_p50_s == pytest.approx(0.01)
    assert r.tpot_p50_s == pytest.approx(0.01)  # one token per 10 ms step
    assert r.latency_p95_s == pytest.approx(0.05)
    assert r.target_passes == 6 * 4 and r.decode_s == pytest.approx(6 * 0.04)
    assert r.acceptance_rate is None  # no draft ran
    assert r.outputs == ((0, 1, 2, 3), (0, 1, 2, 3, 4)) * 2  # the first repeat, one per prompt
    assert r.energy.source == "estimated:cpu-time"


def test_drafted_steps_emit_several_tokens_at_one_timestamp() -> None:
    eng: Any = ScriptedEngine("prompt_lookup:3")
    r = measure_throughput(eng, ["a", "b"], 2, 8, repeats=2, warmup=0, meter=CpuTimeEstimate(10))
    assert r.acceptance_rate == pytest.approx(0.4)
    assert (r.draft_proposed, r.draft_accepted) == (20, 8)
    assert r.tpot_p50_s == pytest.approx((0.01 / 3 + 0.02 / 4) / 2)  # two tokens per 10 ms step, not one


def test_prompt_sets(tmp_path: Any) -> None:
    assert batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert load_prompts("builtin:chat", tmp_path) == BUILTIN_CHAT
    assert prompt_set(BUILTIN_CHAT, 4) == BUILTIN_CHAT[:4]
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hi"}\n\n{"prompt": "there"}\n')
    assert load_prompts("p.jsonl", tmp_path) == ["hi", "there"]
