"""Measurements of a loaded engine: throughput and latency, energy, accuracy."""

from __future__ import annotations

from autoinfer.evaluators.energy import CpuTimeEstimate, EnergyMeter, EnergyReading, NvmlMeter, RaplMeter, meter_for
from autoinfer.evaluators.throughput import ThroughputResult, measure_throughput

__all__ = [
    "CpuTimeEstimate",
    "EnergyMeter",
    "EnergyReading",
    "NvmlMeter",
    "RaplMeter",
    "ThroughputResult",
    "measure_throughput",
    "meter_for",
]
