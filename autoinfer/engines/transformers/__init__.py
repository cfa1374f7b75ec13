"""The transformers engine's registration: the reference runtime (PyTorch through Hugging Face
transformers), with torchao / optimum-quanto weight quantization and transformers' own drafts.

`engine.py` is the engine, `export.py` how an exported trial is served (`autoinfer serve`).
Importing this package registers the engine without importing torch or transformers.
"""

from __future__ import annotations

from autoinfer.engines.base import ENGINES, EngineSpec
from autoinfer.engines.transformers.engine import resolved_int_backend
from autoinfer.spaces.dimensions import TRANSFORMERS_QUANTIZATIONS

SPEC = ENGINES.register("transformers")(
    EngineSpec(
        name="transformers",
        module="autoinfer.engines.transformers.engine",
        quantizations=TRANSFORMERS_QUANTIZATIONS,
        draft_kinds=("none", "prompt_lookup", "early_exit", "model"),
        hardware_kinds=("cpu", "cuda", "mps"),
        draft_max_batch=1,
        # fp16 matmuls on CPU run through slow fallback kernels; bf16 is the CPU half format.
        unsupported={"cpu": ("fp16",), "mps": ("bf16", "int4")},
        version_packages=("torch", "transformers", "optimum-quanto", "torchao"),
        accuracy_settings=lambda config, point: {"int_backend": resolved_int_backend(config, point)},
        export="autoinfer.engines.transformers.export:runtime",
    )
)
