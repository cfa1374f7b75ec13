"""Every metric a trial can report, declared once with its unit and the direction that is better.

Objectives and constraints in the config name these; an unknown name is a config error with a
"did you mean" hint. A trial that emits a key not declared here is a bug: `check_declared` refuses
it before anything is stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: str  # "max" or "min"
    doc: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        # speed, over the fixed prompt set (same prompts and tokens budget for every batch size)
        Metric("tokens_per_s", "tok/s", "max", "generated tokens / wall time of the repeats (served: of the load)"),
        Metric("tokens_per_s_cv", "1", "min", "std / mean of tokens/s across repeats of the same prompt set"),
        Metric("ttft_p50_s", "s", "min", "median per-request time from handing its batch over to its first token"),
        Metric("tpot_p50_s", "s", "min", "median per-request (last token - first token) / (tokens - 1)"),
        Metric("latency_p50_s", "s", "min", "median per-request time from handing its batch over to its last token"),
        Metric("latency_p95_s", "s", "min", "95th percentile of the same"),
        Metric("generated_tokens", "tok", "max", "tokens generated over the measured repeats"),
        Metric("wall_s", "s", "min", "wall time of the measured repeats"),
        # memory
        Metric("peak_memory_gb", "GB", "min", "peak memory while generating (not while loading or quantizing)"),
        Metric("load_peak_memory_gb", "GB", "min", "peak memory from process start to the end of loading"),
        # energy
        Metric("energy_j", "J", "min", "energy over the measured repeats (read energy_source)"),
        Metric("mean_power_w", "W", "min", "energy_j / wall time of the measured repeats"),
        # the machine during the measured window
        Metric("other_cpu_pct", "%", "min", "CPU time of processes outside the trial's tree / the target's CPU time"),
        Metric("steal_pct", "%", "min", "CPU time the hypervisor gave to other guests / the machine's CPU time"),
        Metric("busy_remeasures", "1", "min", "measured windows thrown away because the machine was busy"),
        Metric("j_per_token", "J/tok", "min", "energy_j / generated tokens"),
        # accuracy, on the trial's own loaded model
        Metric("accuracy", "1", "max", "lm-eval metric (acc by default) averaged over tasks"),
        Metric("accuracy_stderr", "1", "min", "stderr of accuracy"),
        Metric("accuracy_samples", "items", "max", "items scored, summed over tasks"),
        Metric("accuracy_eval_s", "s", "min", "wall time of the accuracy evaluation (where this trial ran it)"),
        Metric("accuracy_energy_j", "J", "min", "energy of the accuracy evaluation, by the trial's meter"),
        Metric("correct_tokens_per_j", "tok/J", "max", "accuracy * tokens / energy_j (served: good requests' tokens)"),
        # drafts
        Metric("acceptance_rate", "1", "max", "accepted draft tokens / proposed draft tokens"),
        Metric("draft_tied_prompts", "prompts", "min", "prompts whose drafted output parted from plain at a tie"),
        Metric("draft_tie_margin", "logits", "min", "largest logit margin between two tokens accepted as a tie"),
        Metric("draft_divergence", "1", "min", "prompts the draft parts from plain greedy on, beyond a tie / prompts"),
        Metric("greedy_self_divergence", "1", "min", "prompts plain greedy parts from itself at another batch"),
        Metric("draft_proposed", "tok", "max", "draft tokens proposed over the measured repeats"),
        Metric("draft_accepted", "tok", "max", "of which the target accepted"),
        # money, with the user's prices (config `cost`)
        Metric(
            "usd_per_mtok", "$/Mtok", "min", "(wall_s h x usd_per_hour + energy_j kWh x usd_per_kwh) per 1e6 tokens"
        ),
        Metric("usd_per_correct_mtok", "$/Mtok", "min", "the same per 1e6 correct tokens (as correct_tokens_per_j)"),
        # served trials (workload.mode: served): one load point on the exported server
        Metric("requests_sent", "req", "max", "measured requests sent to the server (warm-up not counted)"),
        Metric("completed_requests", "req", "max", "requests answered in full"),
        Metric("failed_requests", "req", "min", "requests refused (429 included) or failed: never good"),
        Metric("good_requests", "req", "max", "completed requests within every SLO limit"),
        Metric("request_throughput_rps", "req/s", "max", "completed requests / wall_s"),
        Metric("goodput_rps", "req/s", "max", "good requests / wall_s (vLLM's goodput)"),
        Metric("slo_attainment", "1", "max", "good requests / requests sent"),
        Metric("tokens_per_s_per_user", "tok/s", "max", "mean over completed requests of output tokens / E2EL"),
        Metric("ttft_p95_s", "s", "min", "served: 95th percentile time to first token, queueing included"),
        Metric("ttft_p99_s", "s", "min", "served: 99th percentile of the same (100 requests or more)"),
        Metric("tpot_p95_s", "s", "min", "served: 95th percentile (E2EL - TTFT) / (output tokens - 1)"),
        Metric("tpot_p99_s", "s", "min", "served: 99th percentile of the same (100 requests or more)"),
        Metric("itl_p50_s", "s", "min", "served: median gap between streamed chunks"),
        Metric("itl_p95_s", "s", "min", "served: 95th percentile of the same"),
        Metric("itl_p99_s", "s", "min", "served: 99th percentile of the same (100 requests or more)"),
        Metric("e2el_p50_s", "s", "min", "served: median time from sending a request to its last token"),
        Metric("e2el_p95_s", "s", "min", "served: 95th percentile of the same"),
        Metric("e2el_p99_s", "s", "min", "served: 99th percentile of the same (100 requests or more)"),
        Metric("server_start_s", "s", "min", "served: seconds from starting the server to a healthy /health"),
        Metric("client_cpu_s", "CPU-s", "min", "served: CPU time of the load generator in the measured window"),
        # roofline
        Metric("roofline_pct", "%", "max", "bytes streamed per decode second / measured bandwidth"),
        Metric("weight_bytes", "B", "min", "target weight bytes read per forward pass"),
        Metric("draft_weight_bytes", "B", "min", "draft weight bytes read per draft step (0: no weights)"),
        Metric("bandwidth_gbs", "GB/s", "max", "measured memory read bandwidth of the target"),
    ]
}


class UndeclaredMetric(ValueError):
    """A trial reported a metric that metrics.METRICS does not declare."""


def check_declared(names: Iterable[str]) -> None:
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise UndeclaredMetric(f"undeclared metric(s) {unknown}: declare them in autoinfer/metrics.py")
