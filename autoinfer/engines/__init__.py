"""Inference engines behind one small interface; importing this registers the built-in ones.

Engines from other packages register themselves the same way when their module is imported:
name it in the AUTOINFER_PLUGINS environment variable (comma-separated module names), which trial
processes inherit, so a plugin engine runs in them too.
"""

from __future__ import annotations

import importlib
import os

# Each built-in engine is a package that registers itself (its EngineSpec: what it runs, its
# quantizations, drafts, hardware, versions and export recipe) into autoinfer.registry.ENGINES on
# import. vLLM itself is imported by trials only.
from autoinfer.engines import llamacpp, transformers, vllm  # noqa: F401 - imported to register
from autoinfer.engines.base import ENGINES, Engine, EngineSpec, GenerationResult, TrialPoint


def load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("AUTOINFER_PLUGINS", "").split(","))):
        importlib.import_module(module)


load_plugins()

__all__ = ["ENGINES", "Engine", "EngineSpec", "GenerationResult", "TrialPoint"]
