"""Every metric a trial can report, with its unit and the direction that is better.

Objectives and constraints in the config name these; an unknown name is a config error with a
"did you mean" hint.
"""

from __future__ import annotations

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
        Metric("tokens_per_s", "tok/s", "max", "generated tokens counted in the outputs / wall time"),
        Metric("ttft_p50_s", "s", "min", "median time to first generated token"),
        Metric("tpot_p50_s", "s", "min", "median time per output token after the first"),
        Metric("latency_p50_s", "s", "min", "median request latency (prompt in -> last token out)"),
        Metric("latency_p95_s", "s", "min", "95th percentile request latency"),
        Metric("peak_memory_gb", "GB", "min", "peak resident (CPU) or allocated (GPU) memory"),
        Metric("tokens_per_s_cv", "1", "min", "coefficient of variation of tokens/s across repeats"),
        Metric("energy_j", "J", "min", "energy over the measured repeats"),
        Metric("mean_power_w", "W", "min", "energy_j / measured wall time"),
        Metric("j_per_token", "J/tok", "min", "energy_j / generated tokens"),
        Metric("accuracy", "1", "max", "lm-eval primary metric (acc) averaged over tasks"),
        Metric("accuracy_stderr", "1", "min", "lm-eval bootstrap/analytic stderr of accuracy"),
        Metric("correct_tokens_per_j", "tok/J", "max", "accuracy * tokens_per_s / mean_power_w"),
        Metric("acceptance_rate", "1", "max", "accepted draft tokens / proposed draft tokens"),
        Metric("roofline_pct", "%", "max", "decode speed as % of the weight-streaming bandwidth bound"),
        Metric("generated_tokens", "tok", "max", "tokens generated over the measured repeats"),
    ]
}
