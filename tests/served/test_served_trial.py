"""A served trial end to end on the fake engine: the point's exported server (`autoinfer serve`)
started, driven by vLLM's load generator, measured, recorded and stopped; and bad served configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psutil
import pytest

from autoinfer.config import parse_config
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import ConfigError, TrialError
from autoinfer.identity import accuracy_key, identity_hash, study_identity
from autoinfer.served.loadgen import LoadResult
from autoinfer.served.slo import Slo, summarize
from autoinfer.trial import run_trial
from tests.conftest import fake_config

SERVED = {"mode": "served", "max_new_tokens": 8,
          "served": {"requests": 12, "warmup_requests": 1, "request_rate": 20, "slo": {"ttft_s": 5.0}}}  # fmt: skip


COST = {"usd_per_hour": 2.0, "usd_per_kwh": 0.3}


def served_config(tmp: Path, **served: Any) -> Any:
    raw = fake_config(tmp, workload={**SERVED, "served": {**SERVED["served"], **served}}, cost=COST)
    return parse_config(raw, base_dir=str(tmp))


def run(cfg: Any, point: TrialPoint) -> Any:
    ident = study_identity(cfg)
    return run_trial(cfg, point, identity_hash(ident), accuracy_key(ident, cfg, point), {}, lambda s: None)


def test_a_served_trial_measures_the_exported_server_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = served_config(tmp_path)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rec = run(cfg, TrialPoint("fake", "fp32", "none", 2, "cpu:1"))
    m, served = rec.metrics, rec.provenance.served
    assert m["requests_sent"] == 12 and m["completed_requests"] + m["failed_requests"] == 12
    assert m["generated_tokens"] == 8 * m["completed_requests"]  # ignore_eos: every request its max_tokens
    # The recorded figures are the generator's own per-request arrays, summarized: recompute them.
    result = LoadResult.from_json(json.dumps(served["result"]))
    again = summarize(result, Slo(ttft_s=5.0)).flat()
    assert m["goodput_rps"] == pytest.approx(again["goodput_rps"]) and m["ttft_p95_s"] == again["ttft_p95_s"]
    assert m["slo_attainment"] == again["slo_attainment"] and 0 < m["ttft_p50_s"] <= m["e2el_p95_s"]
    # autoinfer serve streams each pass's token as the batch makes it, and TPOT is claimed: every
    # answer's first token comes its 7 later passes (4.8 ms or more each here) before its last, 20 ms
    # with room for chunks the client reads together (a server sending answers whole: under 1 ms).
    assert served["streams_tokens"] is True and 0 < m["tpot_p50_s"] and m["itl_p50_s"] > 0
    assert all(e - t >= 0.02 for e, t, ok in zip(result.e2el_s, result.ttft_s, result.success, strict=True) if ok)
    assert served["server"].startswith("autoinfer serve") and served["load"] == "20 req/s"
    assert m["energy_j"] > 0 and rec.provenance.energy_meter_reason.startswith("the server's process tree")
    assert m["server_start_s"] > 0 and m["client_cpu_s"] >= 0 and "accuracy" in m
    good_tokens = sum(result.output_tokens[i] for i in range(12) if result.success[i] and result.ttft_s[i] <= 5.0)
    assert m["correct_tokens_per_j"] == pytest.approx(m["accuracy"] * good_tokens / m["energy_j"])
    # The price of the window: the machine's hours plus the energy, per million (correct) tokens.
    usd = m["wall_s"] / 3600 * 2.0 + m["energy_j"] / 3.6e6 * 0.3
    assert m["usd_per_mtok"] == pytest.approx(usd / m["generated_tokens"] * 1e6)
    correct = m["accuracy"] * good_tokens
    assert m["usd_per_correct_mtok"] == (pytest.approx(usd / correct * 1e6) if correct else math.inf)
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_a_server_that_never_becomes_ready_fails_with_its_log(tmp_path: Path, monkeypatch: Any) -> None:
    cfg = served_config(tmp_path)
    import autoinfer.served.command as command

    real = command.server_command

    def broken(*args: Any) -> Any:
        cmd = real(*args)
        cmd.deployment.write_text("not: [a deployment")  # autoinfer serve cannot read it, says so, exits 2
        return cmd

    monkeypatch.setattr("autoinfer.served.trial.server_command", broken)
    with pytest.raises(TrialError, match=r"(?s)server did not serve: the server exited with status 2.*deployment"):
        run(cfg, TrialPoint("fake", "fp32", "none", 1, "cpu:1"))


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"mode": "served", "served": {"slo": {"ttft_ms": 1}}}, "workload.served.slo.ttft_ms: unknown key"),
        ({"mode": "served", "served": {"request_rate": -1}}, "workload.served.request_rate: must be a positive"),
        ({"mode": "served", "served": {"request_rate": 1, "concurrency": 2}}, "request_rate or concurrency, not both"),
        ({"served": {"slo": {"ttft_s": 1}}}, "apply to served trials; set workload.mode: served"),
        ({"mode": "batch"}, "workload.mode"),
    ],
)
def test_bad_served_configs_are_one_line(tmp_path: Path, workload: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(fake_config(tmp_path, workload=workload), "c.yaml", str(tmp_path))
    assert "\n" not in str(e.value) and str(e.value).startswith("c.yaml")


def test_the_served_load_point_is_part_of_the_study_identity(tmp_path: Path) -> None:
    offline = study_identity(parse_config(fake_config(tmp_path), base_dir=str(tmp_path)))
    assert "workload.mode" not in offline  # offline studies keep the identity they had
    a, b = study_identity(served_config(tmp_path)), study_identity(served_config(tmp_path, request_rate=4))
    assert a["workload.mode"] == "served" and identity_hash(a) != identity_hash(b)


# -- a served search: one server per load sweep; exported and verified -----------------------------


def test_a_served_search_reuses_each_server_across_its_loads_and_verify_replays_one(tmp_path: Path) -> None:
    """Two servers (batch 1, 2) x two load points: two server starts for four trials, nothing left
    running after the search. Then export and verify: the replayed load passes; the same export
    with the trial's goodput tripled (the served copy then delivers a third of it) fails."""
    import yaml

    from autoinfer.export import deployment_config, to_yaml
    from autoinfer.record import record_of
    from autoinfer.search.study import run_search
    from autoinfer.served.verify import is_served_deployment, verify_served, with_served_block

    workload = {**SERVED, "served": {**SERVED["served"], "request_rate": [20, 40]}}
    raw = fake_config(tmp_path, workload=workload, accuracy={"tasks": []}, objectives=[{"name": "goodput_rps"}],
                      space={"engine": ["fake"], "quantization": ["fp32"], "draft": ["none"], "batch_size": [1, 2]},
                      search={"trials": 4, "sampler": "grid"})  # fmt: skip
    cfg = parse_config(raw, base_dir=str(tmp_path))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    study, _ = run_search(cfg)
    recs = [record_of(t) for t in study.trials]
    assert all(r is not None for r in recs)
    seen = [(r.point.batch_size, r.point.load, r.provenance.served["server_reused"]) for r in recs if r]
    assert seen == [(1, "rate:20", False), (1, "rate:40", True), (2, "rate:20", False), (2, "rate:40", True)]
    assert ["server_start_s" in r.metrics for r in recs if r] == [True, False, True, False]
    assert [r.provenance.served["load"] for r in recs if r] == ["20 req/s", "40 req/s"] * 2
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    # multiprocessing's resource tracker (started by the first spawned trial) lives as long as this
    # process, as it does after any search; no server, engine or child of one may.
    running = [psutil.Process(p) for p in left if psutil.pid_exists(p)]
    alive = [p.cmdline() for p in running if p.status() != psutil.STATUS_ZOMBIE]
    assert not [c for c in alive if "multiprocessing.resource_tracker" not in " ".join(c)], alive

    rec = recs[3]
    assert rec is not None
    data = with_served_block(deployment_config(cfg, study, 3), cfg, rec)
    assert list(data)[-2:] == ["served", "measured"] and data["served"]["load"]["request_rate"] == 40.0
    assert data["served"]["slo"]["ttft_s"] == 5.0 and len(data["served"]["prompts"]) >= 2
    path = tmp_path / "ship" / "deploy.yaml"
    path.parent.mkdir()
    path.write_text(to_yaml(data))
    assert is_served_deployment(path)
    # Wide bands: a toy engine on a shared CI machine; what this checks is the replay itself.
    report = verify_served(path, tolerance=0.2, max_ratio=5.0, latency_band=10.0)
    assert report.passed, report.failures
    assert set(report.served) >= {"goodput_rps", "slo_attainment", "tokens_per_s", "ttft_p95_s"}
    data["measured"]["metrics"]["goodput_rps"] *= 3
    path.write_text(yaml.safe_dump(data))
    cut = verify_served(path)
    assert not cut.passed and any(f.startswith("goodput_rps: served") for f in cut.failures), cut.failures


def test_the_server_command_is_written_from_what_the_engine_recorded_as_plain_data(tmp_path: Path) -> None:
    """An engine's record holds what it holds (torch's version is a str subclass YAML refuses): the
    deployment a served trial writes for its server is plain data all the same."""
    from autoinfer.served.command import server_command

    class Version(str):
        pass

    cfg = served_config(tmp_path)
    point = TrialPoint("fake", "fp32", "none", 2, "cpu:1")
    cmd = server_command(cfg, point, {"torch": Version("2.13.0+cpu")}, tmp_path)
    assert cmd.argv[1:4] == ["-m", "autoinfer", "serve"] and cmd.key_env == "AUTOINFER_API_KEY"
    assert "torch: 2.13.0+cpu" in cmd.deployment.read_text() and cmd.streams_tokens is True
