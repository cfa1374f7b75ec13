"""Search-space dimensions and how a trial samples them."""

from __future__ import annotations

from autoinfer.spaces.dimensions import DraftSpec, HardwareSpec
from autoinfer.spaces.space import NoValidPoint, enumerate_points, sample_point

__all__ = ["DraftSpec", "HardwareSpec", "NoValidPoint", "enumerate_points", "sample_point"]
