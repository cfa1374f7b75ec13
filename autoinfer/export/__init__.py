"""Turn a measured frontier trial into a deployment config."""

from __future__ import annotations

from autoinfer.export.deploy import deployment_config, to_yaml

__all__ = ["deployment_config", "to_yaml"]
