"""autoinfer: search LLM inference configurations for the most correct tokens per joule."""

from __future__ import annotations

from autoinfer.config import Config, load_config, parse_config
from autoinfer.engines import ENGINES, Engine, EngineSpec, GenerationResult, TrialPoint
from autoinfer.errors import AutoinferError, ConfigError, TrialError

__version__ = "0.1.0"

__all__ = [
    "ENGINES",
    "AutoinferError",
    "Config",
    "ConfigError",
    "Engine",
    "EngineSpec",
    "GenerationResult",
    "TrialError",
    "TrialPoint",
    "__version__",
    "load_config",
    "parse_config",
]
