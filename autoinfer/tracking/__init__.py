"""Experiment tracking: MLflow runs and the Pareto artifacts."""

from __future__ import annotations

from autoinfer.tracking.mlflow_tracker import Tracker, redact

__all__ = ["Tracker", "redact"]
