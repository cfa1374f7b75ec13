"""The vLLM engine: an in-process `vllm.LLM` on an HF checkpoint (GGUF sources dequantized once).

- Weights: vLLM has no GGUF loader on CPU, so a GGUF source becomes the project's cached fp32 HF
  checkpoint (`sources.dequantized`, keyed by the file's digest) and vLLM casts it to the trial's
  dtype (fp32, bf16; fp16 on CUDA). The w8a8 and w4a16 levels are compressed-tensors checkpoints
  llmcompressor makes from that dense checkpoint (`compress`, cached by digest); vLLM reads their
  scheme from config.json and computes in bf16 around the int8/int4 weights.
- Processes: `vllm.LLM` starts an EngineCore process (scheduler, KV-cache manager) which starts
  one Worker process (the model's forward passes); this process tokenizes, hands requests over and
  collects outputs. The trial's CPU time and memory therefore live in a process tree, which
  `machine_load.tree_cpu_s` and `memory.tree_window` read.
- Threads: on `cpu:N` the Worker's OpenMP pool is bound to N cores (VLLM_CPU_OMP_THREADS_BIND,
  the first N this process may run on). The EngineCore and this frontend are not bound: they run
  wherever the kernel puts them, and take CPU time of their own for scheduling and output
  handling (counted in the tree). vLLM's own default ("auto") keeps one core per worker free for
  the EngineCore, so `cpu:1` on a 2-core machine is that default and `cpu:2` the whole machine.
- Batch: the B prompts are requests of one engine with max_num_seqs = B: continuous batching,
  one forward pass per step for every running sequence.
- Drafts: prompt lookup is vLLM's n-gram proposer, a draft model its `draft_model` method; both
  draft per sequence at any batch size. vLLM has no per-request switch to turn drafting off, so
  plain decoding of the same target (`generate(draft=False)`, what the lossless check compares
  against) runs on a second, undrafted `LLM` with the same settings, built the first time it is
  asked for: in a trial that is after the measured window, so its memory and CPU do not enter it.
- Prefix caching is off: a trial's repeats send the same prompts, and a cache hit would shorten
  their prefill.
"""

from __future__ import annotations

import getpass
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoinfer.cache import cache_dir, tree_digest
from autoinfer.engines.base import GenerationResult, HFTokenizerEngine, NewTokens, StepCallback
from autoinfer.engines.sources import dequantized, dequantized_checkpoint, resolve_source, source_as_gguf
from autoinfer.engines.vllm import distribution, runs_eager
from autoinfer.engines.vllm.compress import SCHEMES, compressed, cpu_int4_problem
from autoinfer.engines.vllm.export import environment
from autoinfer.errors import TrialError

# The dtype vLLM computes in at each level (a compressed level's activations and unquantized tensors).
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "w8a8": "bfloat16", "w4a16": "bfloat16"}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_INT_BYTES = {"I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8}
PER_SEQUENCE_CTX = 1024  # tokens of prompt room per sequence beyond max_new_tokens (as llama.cpp's engine)
KV_HEADROOM = 1.25  # KV cache sized to this much more than B full sequences need (block rounding)
MIN_KV_BYTES = 32 << 20
SEED = 0
LOGPROBS_TOP = 20  # log-probabilities per step next_token_logits asks for when it decodes (width 1)
INDUCTOR_CACHE_VAR = "TORCHINDUCTOR_CACHE_DIR"
# Request ids unique in this process, not per engine: two engines may submit to one LLM.
_REQUEST_IDS = itertools.count()


def checkpoint_config(path: str) -> dict[str, Any]:
    """The text model's config.json entries (a multimodal config nests them under text_config)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise TrialError(f"{path} holds no config.json: vLLM needs an HF checkpoint (or a GGUF source)")
    cfg: dict[str, Any] = json.loads(file.read_text())
    return {**cfg, **cfg.get("text_config", {})}


def kv_bytes_per_token(cfg: dict[str, Any], dtype: str) -> int:
    """Keys and values of one token in every layer."""
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    return 2 * int(cfg["num_hidden_layers"]) * kv_heads * head_dim * _BYTES[dtype]


def checkpoint_weight_bytes(path: str, dtype: str) -> int:
    """Bytes a forward pass reads: every tensor of the checkpoint once, floating-point ones at the
    run dtype, integer ones (a compressed checkpoint's int8 weights, its int4 packed in int32) as stored.

    An untied input embedding is left out (a lookup reads B rows, not the table); a tied one is the
    output layer and counts, once (checkpoints store tied weights once).
    """
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise TrialError(f"{path}: no safetensors files to count weights from")
    tied = bool(checkpoint_config(path).get("tie_word_embeddings", False))
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if "embed_tokens" in name and not tied:
                    continue
                piece = st.get_slice(name)
                n = 1
                for d in piece.get_shape():
                    n *= int(d)
                stored = piece.get_dtype()  # safetensors' names: "F32", "BF16", "I8", "I32", ...
                total += n * (_INT_BYTES[stored] if stored in _INT_BYTES else _BYTES[dtype])
    return total


def _inductor_cache() -> Path:
    """The user's TORCHINDUCTOR_CACHE_DIR if they chose one, else autoinfer's.

    torch writes its default (/tmp/torchinductor_<user>) into the variable the first time this
    process asks Inductor for its cache, so that value is not taken for a choice.
    """
    given = os.environ.get(INDUCTOR_CACHE_VAR)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): torch then names it by uid
        user = f"uid_{os.getuid()}"
    default = Path(tempfile.gettempdir()) / f"torchinductor_{user}"
    if given and Path(given).absolute() != default.absolute():
        return Path(given)
    return cache_dir("inductor")


def _files_in(folder: Path | None) -> int:
    """Files under a compile cache (its lock files aside): a load that adds none compiled nothing."""
    if folder is None or not folder.is_dir():
        return 0
    return sum(1 for f in folder.rglob("*") if f.is_file() and "locks" not in f.relative_to(folder).parts)


def _plain_daemon_flag() -> None:
    """Let this process start vLLM's EngineCore.

    A trial runs in a daemonic multiprocessing child (search.isolation), and multiprocessing
    refuses to start children from a daemonic process; vLLM starts its EngineCore with
    multiprocessing. The flag only guards that check here (the search kills this process, and
    the kernel stops it with the search, whatever the flag says). vLLM's own processes are shut
    down by `close()`; failing that, they are killed with the trial's process group
    (search.isolation), since the engine core does not die with a SIGKILLed parent.
    """
    proc = multiprocessing.current_process()
    if proc.daemon:
        proc._config["daemon"] = False  # type: ignore[attr-defined]


class VllmEngine(HFTokenizerEngine):
    llm: Any = None
    plain_llm: Any = None  # the undrafted twin, built on first draft=False

    def load(self) -> None:
        point, hw = self.point, self.point.hardware_spec
        self.dtype = _DTYPES[point.quantization]
        self.on_stage("prepare")
        self._prepare_weights()
        self.on_stage("load")
        self._size_kv_cache()
        self._set_environment(hw.kind, hw.threads)
        _plain_daemon_flag()
        d = point.draft_spec
        self.draft_width = point.draft_tokens if d.kind != "none" else 0
        # What vLLM's processes read from the environment, before LLM() adds its own: an export's
        # server command sets the same (autoinfer.engines.vllm.export).
        self.info["vllm_env"] = environment()
        before = _files_in(self.compile_cache)
        self.llm = self._build(drafted=d.kind != "none")
        if self.compile_cache is not None:
            # Inductor writes kernels only for graphs it has not compiled before (none on a hit).
            self.info["compile_cache"] = "hit" if _files_in(self.compile_cache) == before else "miss"
        self._ids = _REQUEST_IDS
        self.tokenizer = self.llm.get_tokenizer()
        self._record_settings()

    def _prepare_weights(self) -> None:
        """The checkpoint vLLM loads (dequantized from a GGUF, compressed for w8a8/w4a16) and the
        draft model's, made or found in the cache."""
        point = self.point
        path, facts = dequantized_checkpoint(self.config)
        self.info.update(facts)
        if point.quantization == "w4a16" and point.hardware_spec.kind == "cpu" and (problem := cpu_int4_problem()):
            raise TrialError(problem)
        if point.quantization in SCHEMES:
            path, facts = compressed(path, point.quantization)
            self.info.update(facts)
        self.info["checkpoint"] = self.path = path
        # What `export --copy-files` and `verify` hold a shipped directory to (hashes are memoized
        # per file: a second trial on the same checkpoint reads them back).
        if Path(path).is_dir():  # else _size_kv_cache says what vLLM needs
            self.info["checkpoint_sha256"] = tree_digest(Path(path))
        d = point.draft_spec
        self.draft_path: str | None = None
        if d.kind != "model":
            return
        gguf = source_as_gguf(self.config, d.model)
        if gguf is not None:
            self.draft_path, dfacts = dequantized(gguf, self.config.model.trust_remote_code)
            self.info.update({f"draft_{k}": v for k, v in dfacts.items()})
        else:
            self.draft_path = resolve_source(self.config, d.model)
        if not Path(self.draft_path).is_dir():
            raise TrialError(f"draft model {d.model!r}: vLLM needs a local HF checkpoint, got {self.draft_path}")
        self.info["draft_checkpoint"] = self.draft_path
        self.info["draft_checkpoint_sha256"] = tree_digest(Path(self.draft_path))

    def _size_kv_cache(self) -> None:
        """Context length and KV-cache bytes: B full sequences (and their draft's), with headroom,
        unless vllm.kv_cache_gb says."""
        cfg = checkpoint_config(self.path)
        room = PER_SEQUENCE_CTX + self.config.workload.max_new_tokens
        self.max_model_len = min(int(cfg.get("max_position_embeddings") or room), room)
        settings = self.config.vllm
        if settings.kv_cache_gb is not None:
            self.kv_bytes = int(settings.kv_cache_gb * 1e9)
            return
        per_token = kv_bytes_per_token(cfg, self.dtype)
        if self.draft_path is not None:  # the draft's KV shares the same budget
            per_token += kv_bytes_per_token(checkpoint_config(self.draft_path), self.dtype)
        need = per_token * self.point.batch_size * self.max_model_len * KV_HEADROOM
        self.kv_bytes = max(MIN_KV_BYTES, int(need))

    def _record_settings(self) -> None:
        """What the built engine runs with, as vLLM resolved it."""
        import vllm

        eng_cfg = self.llm.llm_engine.vllm_config
        sched = eng_cfg.scheduler_config
        mode = getattr(eng_cfg.compilation_config, "mode", None)
        self.info.update(
            vllm=vllm.__version__,
            vllm_distribution=distribution(),
            python=sys.executable,  # the interpreter with vLLM (an export's server runs under it)
            tokenizer=self.tokenizer_path,
            dtype=self.dtype,
            enforce_eager=self.eager,
            compilation_mode=None if mode is None else int(mode),
            max_model_len=self.max_model_len,
            max_num_seqs=self.point.batch_size,
            # LLM()'s defaults: vLLM's server has others (2048 batched tokens on CPU, not 4096).
            max_num_batched_tokens=sched.max_num_batched_tokens,
            chunked_prefill=bool(sched.enable_chunked_prefill),
            kv_cache_memory_bytes=eng_cfg.cache_config.kv_cache_memory_bytes,
            kv_cache_blocks=eng_cfg.cache_config.num_gpu_blocks,
            kv_block_size=eng_cfg.cache_config.block_size,
            prefix_caching=False,
            seed=SEED,
            draft_tokens_per_step=self.draft_width,
            # vLLM rewrites LD_PRELOAD (libgomp) in this process's environment when it loads on CPU.
            ld_preload=os.environ.get("LD_PRELOAD", ""),
        )
        if self.speculative is not None:
            self.info["speculative_config"] = dict(self.speculative)

    def _set_environment(self, kind: str, threads: int) -> None:
        """What vLLM reads from the environment when it starts its processes, set and recorded."""
        # The legacy VLLM_CPU_KVCACHE_SPACE would override kv_cache_memory_bytes below.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        self.compile_cache: Path | None = None
        if not self.eager:
            # The AOT compile cache (the default on torch >= 2.10) failed to reload here
            # ("'function' object has no attribute 'finalize_loading'"); the standard one works.
            os.environ["VLLM_USE_AOT_COMPILE"] = "0"
            # On CPU vLLM's graphs are compiled by Inductor, whose cache defaults to
            # /tmp/torchinductor_<user>: emptied with /tmp. Kept with autoinfer's other caches, a
            # compiled trial of a level and dtype compiled before loads its kernels, whatever its
            # batch size (SmolLM2 bf16, 2-core EPYC: warm-up 85 s compiling, 15 s from the cache).
            self.compile_cache = _inductor_cache()
            os.environ[INDUCTOR_CACHE_VAR] = str(self.compile_cache)
            self.info["compile_cache_dir"] = str(self.compile_cache)
        if kind == "cuda":
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.point.hardware_spec.index or 0)
        if kind == "cpu":
            allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(threads))
            if threads > len(allowed):
                raise TrialError(f"cpu:{threads} asks for more cores than this process may use ({len(allowed)})")
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, allowed[:threads]))
            self.info["vllm_cpu_omp_threads_bind"] = os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        self.info["vllm_use_aot_compile"] = os.environ.get("VLLM_USE_AOT_COMPILE", "default")

    @property
    def speculative(self) -> dict[str, Any] | None:
        d, k = self.point.draft_spec, self.point.draft_tokens
        if d.kind == "prompt_lookup":
            # Up to k tokens that followed the latest match of the last ngram..1 tokens.
            return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": d.ngram,
                    "prompt_lookup_min": 1}  # fmt: skip
        if d.kind == "model":
            return {"method": "draft_model", "model": self.draft_path, "num_speculative_tokens": k}
        return None

    @property
    def eager(self) -> bool:
        return runs_eager(self.point)

    @property
    def tokenizer_path(self) -> str:
        tok = self.config.model.tokenizer
        return resolve_source(self.config, tok) if tok else self.path

    def _build(self, drafted: bool) -> Any:
        from vllm import LLM

        m = self.config.model
        kwargs: dict[str, Any] = {
            "model": self.path,
            "tokenizer": self.tokenizer_path,
            "trust_remote_code": m.trust_remote_code,
            "dtype": self.dtype,
            "enforce_eager": self.eager,
            "max_num_seqs": self.point.batch_size,
            "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": self.kv_bytes,
            "enable_prefix_caching": False,
            "seed": SEED,
            "disable_log_stats": False,  # per-request spec-decode metrics need the stats
            "max_logprobs": -1,  # next_token_logits reads the whole vocabulary
        }
        spec = self.speculative if drafted else None
        if spec is not None:
            kwargs["speculative_config"] = spec
            kwargs["per_request_spec_decode_metrics"] = "summary"
        try:
            return LLM(**kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            raise TrialError(f"vLLM cannot load {self.point.label()}: {type(e).__name__}: {e}") from None

    def _plain(self) -> Any:
        """The LLM that decodes without a draft: the loaded one, or its undrafted twin."""
        if self.speculative is None:
            return self.llm
        if self.plain_llm is None:
            self.plain_llm = self._build(drafted=False)
            self.info["plain_twin_loaded"] = True
        return self.plain_llm

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:  # fmt: skip
        drafted = draft and self.speculative is not None
        engine = (self.llm if drafted else self._plain()).llm_engine
        rids = [f"g{next(self._ids)}" for _ in prompts]
        toks: dict[str, list[int]] = {r: [] for r in rids}
        times: dict[str, list[float]] = {r: [] for r in rids}
        steps = proposed = accepted = 0
        report = NewTokens(on_step, len(rids))
        start = self._submit(engine, rids, prompts, self._greedy(max_new_tokens, ignore_eos))
        while engine.has_unfinished_requests():
            outs = engine.step()
            now = time.perf_counter() - start
            got = False
            for o in outs:
                new = o.outputs[0].token_ids if o.outputs else []
                toks[o.request_id].extend(new)
                times[o.request_id].extend([now] * len(new))  # a step's accepted draft all comes out now
                got = got or bool(new)
                # A finished request's own tally (per_request_spec_decode_metrics): vLLM's
                # Prometheus counters are process-wide, and a second LLM re-registers them.
                spec = o.outputs[0].spec_decode_metrics if o.finished and o.outputs else None
                if spec is not None:
                    proposed += spec.num_draft_tokens
                    accepted += sum(j * c for j, c in enumerate(spec.histogram))
            steps += got
            report([toks[r] for r in rids])
        total = time.perf_counter() - start
        passes = max(steps - 1, 0)  # forward passes after the one that made the first tokens
        # A draft model runs k forward passes per verification (one per proposed token).
        draft_steps = passes * self.draft_width if drafted and self.point.draft_spec.kind == "model" else 0
        return GenerationResult(
            token_ids=tuple(tuple(toks[r]) for r in rids),
            token_times=tuple(tuple(times[r]) for r in rids),
            total_s=total,
            target_passes=passes,
            draft_steps=draft_steps,
            draft_proposed=proposed,
            draft_accepted=accepted,
        )

    def _greedy(self, max_new_tokens: int, ignore_eos: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            ignore_eos=ignore_eos,
            # With ignore_eos every sequence runs to max_new_tokens, as in the other engines.
            stop_token_ids=None if ignore_eos else sorted(self.stop_tokens),
            output_kind=RequestOutputKind.DELTA,  # each step hands back only its new tokens
            detokenize=False,
        )

    @staticmethod
    def _submit(engine: Any, rids: list[str], prompts: Sequence[Sequence[int]], params: Any) -> float:
        """Hand the prompts to the engine as one batch; the perf_counter time they were handed over.

        The EngineCore schedules on its own as soon as a request reaches it, so requests added one
        after another would start in different steps (the first prefilled alone). Pausing its
        scheduler ("keep": new requests queue) while they are handed over makes the B prompts one
        batch from the first step, as the other engines run them.
        """
        core = engine.engine_core
        core.call_utility("pause_scheduler", "keep", False)
        start = time.perf_counter()
        try:
            for rid, ids in zip(rids, prompts, strict=True):
                engine.add_request(rid, {"prompt_token_ids": list(ids)}, params)
        finally:
            core.call_utility("resume_scheduler")
        return start

    def next_token_logits(self, prompt: str, prefix: Sequence[int], width: int, batch: int = 1) -> Any:
        """The target's log-probabilities for the token after prompt + prefix, in two pass shapes.

        vLLM's API cannot choose how a given prefix is fed, so the shapes are the two it can show:
        - width 0: prompt and prefix as one prompt, one prefill pass (B copies in one step), full
          vocabulary;
        - width 1: plain decoding itself: the prompt (B copies) decoded greedily by the undrafted
          LLM, one token per sequence per pass, read at the step after the prefix. That is the
          prefix's own history only where greedy decoding makes the prefix, which is what the
          lossless check asks it for (plain decoding's own output); elsewhere None. vLLM returns
          the top LOGPROBS_TOP of each step (the whole vocabulary at every step costs ~0.5 s per
          token); the other entries are -inf (below the 20th, which is all a tie test needs).
        Widths > 1 (a verification after a one-token history) cannot be reproduced: None.

        The values are log-probabilities (vLLM's raw_logprobs: the log-softmax of the raw logits),
        not logits: one LLM serves one logprobs_mode, and lm-eval needs log-probabilities. They
        differ from the logits by one constant per row, so the argmax and every margin between two
        tokens, which is all the lossless check reads, are the same.
        """
        import numpy as np
        from vllm import SamplingParams

        if width not in (0, 1):
            return None
        ids = self.prompt_ids(prompt)
        if width == 0:
            ids, steps, top = [*ids, *prefix], 1, -1
        else:
            steps, top = len(prefix) + 1, LOGPROBS_TOP
        params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, logprobs=top, detokenize=False)
        (out, *_) = self._plain().generate([{"prompt_token_ids": ids}] * batch, params, use_tqdm=False)
        if list(out.outputs[0].token_ids[: steps - 1]) != list(prefix[: steps - 1]):
            return None  # greedy decoding does not make this prefix: its history is not plain decoding's
        row = out.outputs[0].logprobs[steps - 1]
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        vec = np.full(vocab, -np.inf, dtype=np.float32)
        for tid, lp in row.items():
            vec[tid] = lp.logprob
        return vec

    def verify_pass_shapes(self) -> tuple[tuple[int, int], ...]:
        # Besides plain decoding's (1, B): the whole sequence in one pass at the trial's batch, the
        # only other shape next_token_logits can show. vLLM's verifications (k + 1 tokens of each
        # sequence after a drafted history) cannot be reproduced through its API; the prefill of a
        # whole sequence is the closest (a drafted history is evaluated in multi-token passes), at
        # the batch and, where that is larger, alone (a drafted batch's last sequence runs alone).
        # On SmolLM2 bf16 a prompt-lookup draft parted from plain decoding at a margin of 0.125
        # that neither shape moved at all: such a trial fails the check, unproven as a tie.
        batch = self.point.batch_size
        return ((0, batch), (0, 1)) if batch > 1 else ((0, 1),)

    def lm_eval_model(self) -> Any:
        from autoinfer.engines.vllm.lm import VllmLM

        return VllmLM(self.llm, self.tokenizer, self.config.accuracy.batch_size, self.max_model_len)

    def context_tokens(self) -> int | None:
        return int(self.max_model_len)

    def weight_bytes(self) -> int:
        return checkpoint_weight_bytes(self.path, self.dtype)

    def draft_weight_bytes(self) -> int:
        if self.draft_path is None:
            return 0
        return checkpoint_weight_bytes(self.draft_path, self.dtype)  # vLLM runs the draft in the target's dtype

    def score_facts(self) -> dict[str, Any]:
        return {"enforce_eager": self.eager, "dtype": self.dtype}

    def close(self) -> None:
        """Stop the EngineCore and Worker processes of both LLMs (vLLM otherwise SIGTERMs them at
        interpreter exit and force-kills them about 5 s later)."""
        mine: list[Any] = []
        for llm in (self.llm, self.plain_llm):
            if llm is not None:
                core = llm.llm_engine.engine_core
                manager = getattr(getattr(core, "resources", None), "engine_manager", None)
                mine += list(getattr(manager, "processes", []))  # this LLM's EngineCore process(es)
                core.shutdown()
        self.llm = self.plain_llm = None
        # shutdown() SIGTERMs the EngineCore (which stops its Worker) and SIGKILLs it after 5 s, but
        # does not wait for the kill to land: reap them, so none is left running or as a zombie.
        for proc in mine:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


ENGINE = VllmEngine
