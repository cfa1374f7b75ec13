"""A thin layer over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

The high-level `llama_cpp.Llama` drives one sequence at a time; batched decoding of B sequences
in one context, speculative verification and lm-eval scoring need the batch API directly.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoinfer.errors import TrialError

_LOG_CALLBACK: Any = None
GGML_LOG_LEVEL_WARN = 3


def quiet_llama_logs() -> None:
    """Route llama.cpp's chatty load/graph logs away; warnings and errors still reach stderr."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import sys

    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level >= GGML_LOG_LEVEL_WARN and level != 5:  # 5 = continuation of the previous line
            sys.stderr.write(text.decode(errors="replace"))

    _LOG_CALLBACK = callback  # keep a reference: C holds only the pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaRuntime:
    def __init__(
        self,
        path: Path,
        n_ctx: int,
        n_seq: int,
        threads: int,
        gpu_layers: int = 0,
        main_gpu: int = 0,
        repack: bool = True,
    ) -> None:
        import llama_cpp

        self.ll = llama_cpp
        quiet_llama_logs()
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        # Weight repacking (llama.cpp's default) lays some types out for one-token GEMV and
        # several-token GEMM kernels that round differently (seen: Q4_K, up to 0.9 in a logit).
        mp.use_extra_bufts = repack
        self.repack = repack
        if gpu_layers:
            # The whole model on the trial's own device (cuda:I), not split over every visible GPU:
            # the energy and memory of that one device are what the trial reads.
            mp.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
            mp.main_gpu = main_gpu
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise TrialError(f"llama.cpp could not load {path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        # One llama_decode may carry the whole context, so logits rows of every item stay readable
        # after the call; llama.cpp still computes in micro-batches of n_ubatch tokens.
        cp.n_batch = n_ctx
        cp.n_ubatch = min(n_ctx, 512)
        cp.n_seq_max = n_seq
        # One KV stream per sequence (llama-server's default): a sequence's cells, and so the order
        # its attention sums run in, do not depend on what the other sequences of the batch did.
        # With one shared pool a drafted batch placed cells differently from a plain batch, and the
        # outputs drifted apart at near-ties.
        cp.kv_unified = False
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise TrialError("llama.cpp could not create a context")
        self.n_ctx = n_ctx // n_seq  # KV cells of each sequence
        self.n_batch = cp.n_batch
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, n_seq)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))  # GGUF tokenizer.ggml.add_bos_token

    # -- text <-> tokens
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode()
        n_max = len(data) + 16
        buf = (self.ll.llama_token * n_max)()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        if n < 0:
            raise TrialError("llama.cpp tokenization overflow")
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int]) -> str:
        out = b""
        buf = ctypes.create_string_buffer(64)
        for t in tokens:
            n = self.ll.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, False)
            out += buf.raw[: max(n, 0)]
        return out.decode(errors="replace")

    def token_text(self, token: int) -> str:
        """A token's text with special tokens spelled out (e.g. <|im_end|>)."""
        buf = ctypes.create_string_buffer(64)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode(errors="replace")

    def meta(self, key: str) -> str | None:
        """A GGUF metadata string (e.g. tokenizer.chat_template), None when absent."""
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:  # a longer value: ask again with room for it
            buf = ctypes.create_string_buffer(n + 1)
            self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode(errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self.ll.llama_vocab_is_eog(self.vocab, token))

    # -- KV memory
    def clear(self) -> None:
        self.ll.llama_memory_clear(self.mem, True)

    def truncate(self, seq: int, from_pos: int) -> None:
        """Forget positions >= from_pos of one sequence (rejected draft tokens)."""
        self.ll.llama_memory_seq_rm(self.mem, seq, from_pos, -1)

    # -- evaluation
    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> list[int]:
        """Evaluate (token, pos, seq, want_logits) items in one llama_decode.

        Returns the logits row index of every item that asked for logits, in order; read them
        with `logits(row)` before the next decode.
        """
        if len(items) > self.n_batch:
            raise TrialError(f"{len(items)} tokens do not fit one batch of {self.n_batch}")
        b = self.batch
        rows: list[int] = []
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
            if want:
                rows.append(i)
        b.n_tokens = len(items)
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise TrialError(f"llama_decode failed with code {rc} (a sequence past its {self.n_ctx} KV cells?)")
        return rows

    def logits(self, row: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        ptr = self.ll.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def argmax(self, row: int) -> int:
        return int(np.argmax(self.logits(row)))

    def batch_shift(self, tokens: Sequence[int], widths: Sequence[int], n_seq: int = 1) -> float:
        """Largest logit difference between plain decoding's passes (one token of each of n_seq
        sequences) and verification passes (w tokens of each, for every w in widths) over the same
        tokens: 0.0 where this model's kernels give every pass size the same numbers, so a drafted
        verification reproduces plain decoding exactly. Kernels are chosen by the number of tokens
        in a pass, so the probe uses the very pass sizes a trial will run."""
        tail = max(widths)
        head, probe = list(tokens[:-tail]), list(tokens[-tail:])
        self.clear()
        self.decode([(t, p, s, False) for s in range(n_seq) for p, t in enumerate(head)])
        plain = []  # plain[i][s]: logits after probe token i of sequence s, one token per sequence per pass
        for i, t in enumerate(probe):
            rows = self.decode([(t, len(head) + i, s, True) for s in range(n_seq)])
            plain.append([self.logits(r).copy() for r in rows])
        worst = 0.0
        for w in widths:
            for s in range(n_seq):
                self.truncate(s, len(head))
            rows = self.decode([(probe[i], len(head) + i, s, True) for s in range(n_seq) for i in range(w)])
            for k, row in enumerate(rows):
                s, i = divmod(k, w)
                worst = max(worst, float(np.abs(self.logits(row) - plain[i][s]).max()))
        self.clear()
        return worst

    def model_bytes(self) -> int:
        return int(self.ll.llama_model_size(self.model))

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_batch_free(self.batch)
            self.ll.llama_free(self.ctx)
            self.ll.llama_model_free(self.model)
            self.ctx = None
