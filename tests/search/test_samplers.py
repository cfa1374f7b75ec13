"""The `auto` sampler's plan: every weights once at its largest batch, then the frontier's
weights at their smallest batch, then the base sampler; fixed points (grid, re-queued) win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autoinfer.config import parse_config
from autoinfer.search.samplers import WeightsFirstSampler, worker_sampler
from autoinfer.spaces import sample_point
from tests.conftest import fake_config

SPACE = {"quantization": ["fp32", "bf16", "int8"], "batch_size": [1, 2, 4], "hardware": ["cpu:1", "cpu:2"]}


def _config(tmp: Path) -> Any:
    objectives = [{"name": "tokens_per_s", "direction": "maximize"}, {"name": "latency_p50_s", "direction": "minimize"}]
    return parse_config(fake_config(tmp, space=SPACE, objectives=objectives, search={"seed": 5}), base_dir=str(tmp))


def _value(point: Any) -> list[float]:
    """Speed grows with batch and falls with precision; latency grows with batch."""
    speed = {"fp32": 1.0, "bf16": 2.0, "int8": 1.5}[point.quantization] * point.batch_size
    return [speed, 0.1 * point.batch_size + (0.05 if point.draft != "none" else 0.0)]


def _run(config: Any, sampler: optuna.samplers.BaseSampler, n: int) -> list[Any]:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask()
        point = sample_point(trial, config)
        points.append(point)
        study.tell(trial, _value(point))
    return points


def test_auto_measures_every_weights_first_then_the_frontiers_smallest_batch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert isinstance(worker_sampler(config), WeightsFirstSampler)  # search.sampler defaults to auto
    points = _run(config, worker_sampler(config), 10)
    first = points[:6]  # 3 levels x 2 hardware targets
    assert {(p.quantization, p.hardware) for p in first} == {
        (q, h) for q in SPACE["quantization"] for h in ("cpu:1", "cpu:2")
    }
    assert all(p.batch_size == 4 and p.draft == "none" for p in first)
    # The frontier of those six (speed vs latency, all at batch 4) is bf16 on either target (the
    # same values); the next trials measure both at batch 1, and only then does TPE choose.
    assert {(p.quantization, p.batch_size, p.hardware) for p in points[6:8]} == {
        ("bf16", 1, "cpu:1"),
        ("bf16", 1, "cpu:2"),
    }
    assert len(set(points[:8])) == 8  # (later, TPE may repeat a point: the search answers those from storage)


def test_auto_order_follows_the_seed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    a = _run(config, worker_sampler(config), 6)
    b = _run(config, worker_sampler(config), 6)
    other = config.model_copy(update={"search": config.search.model_copy(update={"seed": 6})})
    c = _run(other, worker_sampler(other), 6)
    assert a == b and a != c


def test_a_queued_point_is_measured_as_queued(tmp_path: Path) -> None:
    config = _config(tmp_path)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=worker_sampler(config))
    study.enqueue_trial({"hardware": "cpu:1", "quantization": "int8", "batch_size": 1, "draft": "prompt_lookup:2"})
    point = sample_point(study.ask(), config)
    assert (point.quantization, point.batch_size, point.draft) == ("int8", 1, "prompt_lookup:2")


def test_auto_then_tries_each_draft_once_across_the_frontier(tmp_path: Path) -> None:
    # After the two weights and the frontier's smallest batch, each draft gets one trial on the
    # frontier's members where their batch can draft (the fake engine drafts at batch 1 only: bf16
    # at batch 1 here), the model draft at the middle of its lengths, before TPE takes over.
    objectives = [{"name": "latency_p50_s", "direction": "minimize"}, {"name": "tokens_per_s", "direction": "maximize"}]
    space = {
        "quantization": ["fp32", "bf16"],
        "draft": ["none", "prompt_lookup:2", "model:int8"],
        "draft_tokens": [2, 4, 8],
    }
    raw = fake_config(tmp_path, objectives=objectives, search={"seed": 3})
    raw["space"] = {**raw["space"], **space}
    config = parse_config(raw, base_dir=str(tmp_path))
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=worker_sampler(config))
    points = []
    for _ in range(5):
        trial = study.ask()
        point = sample_point(trial, config)
        points.append(point)
        speed, latency = _value(point)
        study.tell(trial, [latency, speed])
    assert [(p.quantization, p.batch_size, p.draft) for p in points[:2]] in (
        [("fp32", 2, "none"), ("bf16", 2, "none")],
        [("bf16", 2, "none"), ("fp32", 2, "none")],
    )
    assert (points[2].quantization, points[2].batch_size, points[2].draft) == ("bf16", 1, "none")
    assert [(p.quantization, p.batch_size, p.draft, p.draft_tokens) for p in points[3:5]] == [
        ("bf16", 1, "prompt_lookup:2", 2),
        ("bf16", 1, "model:int8", 4),
    ]
    without = WeightsFirstSampler(optuna.samplers.RandomSampler(seed=0), config, 3, drafts=False)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=without)
    for _ in range(3):
        trial = study.ask()
        speed, latency = _value(sample_point(trial, config))
        study.tell(trial, [latency, speed])
    assert without._plan(study) is None  # the base sampler from here
