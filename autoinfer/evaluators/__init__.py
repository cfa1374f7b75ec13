"""Measurements of a loaded engine: throughput and latency, energy, accuracy.

Import each from its own module (autoinfer.evaluators.throughput, .energy, ...). This package
imports none of them: autoinfer.config reads the built-in prompt sets in .workload, and re-exports
here would pull the engines (through .throughput) under the config.
"""
