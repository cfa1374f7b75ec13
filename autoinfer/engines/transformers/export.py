"""How to serve a measured transformers trial: `autoinfer serve` on the very engine code that was
measured, plus the nearest stock commands (`transformers serve`, `vllm serve`) with what they do
not reproduce."""

from __future__ import annotations

import shlex
from typing import Any

from autoinfer.export.runtime import THIS_FILE
from autoinfer.spaces.dimensions import DraftSpec


def runtime(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _transformers(model, point, info, engine_config)


def _ecosystem_serve(point: dict[str, Any], info: dict[str, Any], checkpoint: str, draft: DraftSpec) -> dict[str, Any]:
    """The stock server command nearest to the measured settings, and whether it reproduces them."""
    hw = str(point["hardware"])
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(str(point["quantization"]))
    device = hw if hw.startswith("cuda") else "cpu"
    threads = info.get("torch_threads")
    cmd = f"OMP_NUM_THREADS={threads} " if threads and device == "cpu" else ""
    cmd += shlex.join(["transformers", "serve", checkpoint, "--dtype", dtype or "auto", "--device", device,
                        "--host", "127.0.0.1"])  # fmt: skip
    out: dict[str, Any] = {"transformers_serve": cmd, "verified": False}
    gaps = []
    if dtype is None:
        gaps.append(f"it cannot load {info.get('quant_backend')} {point['quantization']} weights")
    if draft.kind != "none":
        gaps.append("it does not draft")
    if int(point["batch_size"]) > 1:
        gaps.append("it decodes requests one at a time unless --continuous-batching, which pages attention")
    out["note"] = ("not the measured setup: " + "; ".join(gaps)) if gaps else "same weights and dtype; not run here"
    if hw.startswith("cuda") and dtype is not None:
        out["vllm_serve"] = shlex.join(["vllm", "serve", checkpoint, "--dtype", dtype, "--max-num-seqs",
                                        str(point["batch_size"]), "--host", "127.0.0.1"])  # fmt: skip
        out["vllm_note"] = "vLLM's own kernels and scheduler: not measured or run by autoinfer"
    return out


def _transformers(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    draft = DraftSpec.parse(point["draft"])
    load: dict[str, Any] = {"pretrained": model.get("source"), "dtype": info.get("dtype")}
    if model.get("gguf_file"):
        load["gguf_file"] = model["gguf_file"]  # transformers dequantizes it on load
    if info.get("quant_backend"):
        # Weight-only, every Linear but lm_head, as the trial did (autoinfer.engines.transformers.engine).
        q = point["quantization"]
        load["weight_quantization"] = {"backend": info["quant_backend"], "type": q, "skip": "lm_head"}
    generate: dict[str, Any] = {"do_sample": False}
    if draft.kind == "prompt_lookup":
        generate["prompt_lookup_num_tokens"] = draft.n
        generate["max_matching_ngram_size"] = draft.ngram
    elif draft.kind == "early_exit":
        generate["assistant_early_exit"] = draft.n
    elif draft.kind == "model":
        generate["assistant_model"] = draft.model
        if info.get("draft_same_tokenizer") is False:
            generate["assistant_tokenizer"] = draft.model  # universal assisted generation
    if draft.reads_weights:  # set on the assistant's generation_config, as the trial did
        generate["num_assistant_tokens"] = point["draft_tokens"]
        generate["num_assistant_tokens_schedule"] = "constant"
    block: dict[str, Any] = {
        "transformers": info.get("transformers"),
        "torch": info.get("torch"),
        "torch_threads": info.get("torch_threads"),
        "load": load,
        "generate": generate,
    }
    if engine_config is not None:
        # The measured engine itself behind an OpenAI-compatible route: what `autoinfer verify` runs.
        block["serve"] = f"autoinfer serve {THIS_FILE}"
        block["engine_config"] = engine_config
        # What `autoinfer verify` adds to each request: the generated ids back, compared token for token.
        block["request"] = {"return_token_ids": True}
        block["api_key_env"] = "AUTOINFER_API_KEY"
        # A streamed answer comes a decoding pass at a time: TTFT and TPOT mean what they say.
        block["streams_tokens"] = True
    checkpoint = str(info.get("checkpoint") or model.get("source"))
    block["ecosystem"] = _ecosystem_serve(point, info, checkpoint, draft)
    return block
