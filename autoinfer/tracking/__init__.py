"""Experiment tracking: MLflow runs and the Pareto artifacts."""

from __future__ import annotations

from autoinfer.search.storage import redact
from autoinfer.tracking.mlflow_tracker import Tracker

__all__ = ["Tracker", "redact"]
