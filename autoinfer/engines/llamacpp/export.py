"""How to serve a measured llama.cpp trial: llama-server from the same llama.cpp sources and flags
as the binding that measured it, with the trial's GGUF and context settings."""

from __future__ import annotations

import shlex
from typing import Any

from autoinfer.export.runtime import llama_server
from autoinfer.served.knobs import decode
from autoinfer.spaces.dimensions import DraftSpec


def runtime(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The runtime block of an exported llama.cpp trial (the model section and engine_config are
    not needed: everything comes from what the trial recorded)."""
    return _llamacpp(point, info)


def _llamacpp(point: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    path = info.get("gguf_path")
    if path is None:  # a trial from before the path was recorded
        return {"note": "this trial did not record its GGUF path; re-run it to export the file"}
    draft = DraftSpec.parse(point["draft"])
    b = int(point["batch_size"])
    block: dict[str, Any] = {
        "gguf": {
            "path": path,
            "sha256": info.get("gguf_sha256"),
            "bytes": info.get("gguf_file_bytes"),
            "level": info.get("gguf_level"),
            # Where the level was made from: a quantized source means two roundings, not one.
            "made_from": info.get("requantized_from") or info.get("gguf_converted_to") or info.get("gguf_source_level"),
        },
        "llama_cpp_python": info.get("llama_cpp_python"),
        "context": {
            "n_ctx": info.get("n_ctx"),
            "n_seq_max": b,
            "kv_unified": info.get("kv_unified", True),  # trials before per-sequence streams shared one pool
            "n_threads": info.get("llama_threads"),
            "n_gpu_layers": info.get("n_gpu_layers", 0),
            "repack": info.get("repack", True),
        },
    }
    # llama-server of the same llama.cpp (the one vendored in that llama-cpp-python release).
    server = llama_server()
    block["server"] = {"binary": server, "version": info.get("llama_cpp_python")}
    n_ctx = int(info.get("n_ctx") or 0)
    cmd = [server, "-m", path, "-t", str(info.get("llama_threads")), "-c", str(n_ctx)]
    # Batch sizes as the trial's context had them: a prompt is evaluated in micro-batches of
    # -ub tokens, and kernels may round another split differently.
    # A served point's searched knobs (autoinfer.served.knobs) set them instead.
    knobs = decode("llama.cpp", str(point.get("server_knobs", "")))
    batch = int(knobs.get("batch", n_ctx))
    cmd += ["-b", str(batch), "-ub", str(min(batch, int(knobs.get("ubatch", min(n_ctx, 512)))))]
    cmd += ["-np", str(b), "-ngl", str(info.get("n_gpu_layers", 0))]
    # One shared KV pool or one per slot, as the trial ran (llama-server picks by -np otherwise).
    cmd += ["-kvu"] if info.get("kv_unified", True) else ["-no-kvu"]
    if info.get("n_gpu_layers"):  # one device, as measured (llama-server numbers devices as CUDA does)
        cmd += ["-sm", "none", "-mg", str(info.get("main_gpu", 0))]
    if info.get("repack") is False:  # turned off so verification is exactly plain decoding
        cmd += ["--no-repack"]
    n = info.get("draft_tokens_per_step") or point["draft_tokens"]
    if draft.kind == "model":
        block["draft_gguf"] = info.get("draft_gguf_path")
        block["draft"] = {k: info.get(f"draft_{k}") for k in ("gguf_sha256", "gguf_bytes", "level")}
        cmd += ["--spec-type", "draft-simple", "-md", str(info.get("draft_gguf_path")), "--spec-draft-n-max", str(n)]
    elif draft.kind == "prompt_lookup":
        # llama-server's n-gram drafting matches a fixed-length n-gram; ours tries the last G, then
        # fewer tokens. Close, not identical: its acceptance rate may differ from the measured one.
        cmd += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(draft.ngram)]
        cmd += ["--spec-ngram-simple-size-m", str(n)]
        block["serve_note"] = "prompt lookup in llama-server is close to, not the same as, the measured drafter"
    block["serve"] = shlex.join(cmd)
    block["api_key_env"] = "LLAMA_API_KEY"  # llama-server's environment form of --api-key
    block["streams_tokens"] = True  # a streamed answer comes token by token: TTFT and TPOT mean what they say
    return block
