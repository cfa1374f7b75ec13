"""How to run a measured configuration outside autoinfer, per engine.

Built only from what the trial recorded (its point and `info`), so the export describes the
exact files and settings that were measured, not a re-derivation of them.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from autoinfer.cache import atomic_file, file_digest
from autoinfer.engines.base import TrialPoint
from autoinfer.errors import AutoinferError
from autoinfer.spaces.dimensions import DraftSpec


def llama_server() -> str:
    """The llama-server built beside this venv from the binding's own sources
    (scripts/build_llama_tools.sh), else one on PATH, else the bare name."""
    here = Path(sys.prefix) / "bin" / "llama-server"
    if here.is_file():
        return str(here)
    return shutil.which("llama-server") or "llama-server"


# Stands for the deployment config's own file name in a command; `export --out` fills it in.
THIS_FILE = "<deploy.yaml>"


def runtime_block(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`engine_config`: the study settings the engine reads (model, workload, transformers,
    base_dir), so `autoinfer serve` can load the configuration exactly as the trial did."""
    point = TrialPoint(**point).as_dict()  # fills what older records left out (draft_tokens)
    if point["engine"] == "llama.cpp":
        return _llamacpp(point, info)
    if point["engine"] == "vllm":
        from autoinfer.engines.vllm.export import runtime  # the engine package owns its recipe

        return runtime(model, point, info)
    return _transformers(model, point, info, engine_config)


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
    cmd += ["-b", str(n_ctx), "-ub", str(min(n_ctx, 512))]
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
    return block


def _ecosystem_serve(point: dict[str, Any], info: dict[str, Any], checkpoint: str, draft: DraftSpec) -> dict[str, Any]:
    """The stock server command nearest to the measured settings, and whether it reproduces them."""
    hw = str(point["hardware"])
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(str(point["quantization"]))
    device = hw if hw.startswith("cuda") else "cpu"
    threads = info.get("torch_threads")
    cmd = f"OMP_NUM_THREADS={threads} " if threads and device == "cpu" else ""
    cmd += shlex.join(["transformers", "serve", checkpoint, "--dtype", dtype or "auto", "--device", device])
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
                                        str(point["batch_size"])])  # fmt: skip
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
        # Weight-only, every Linear but lm_head, as the trial did (autoinfer.engines.transformers_engine).
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
    checkpoint = str(info.get("checkpoint") or model.get("source"))
    block["ecosystem"] = _ecosystem_serve(point, info, checkpoint, draft)
    return block


def copy_files(runtime: dict[str, Any], dest: Path) -> list[Path]:
    """Copy the GGUF files a llama.cpp runtime block names into `dest` and point the block at them.

    The copies are checked against the sha256 recorded by the trial, so what ships is byte for
    byte what was measured. Returns the copied paths; a transformers block names no files.
    """
    gguf = runtime.get("gguf")
    if not gguf:
        return []
    copied = []
    for src_text in filter(None, [gguf.get("path"), runtime.get("draft_gguf")]):
        src = Path(src_text)
        if not src.is_file():
            raise AutoinferError(f"{src} is gone from the cache; re-run that trial to make it again")
        target = dest / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            with atomic_file(target) as tmp:
                shutil.copyfile(src, tmp)
        runtime["serve"] = shlex.join(target.name if a == src_text else a for a in shlex.split(runtime["serve"]))
        copied.append(target)
    if file_digest(copied[0]) != gguf.get("sha256"):
        raise AutoinferError(f"{copied[0]} does not match the sha256 the trial recorded")
    gguf["path"] = copied[0].name  # relative to the deployment config
    if runtime.get("draft_gguf"):
        runtime["draft_gguf"] = copied[-1].name
    return copied
