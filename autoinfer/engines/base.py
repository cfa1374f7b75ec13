"""The engine interface: load one configuration, generate with timings, expose lm-eval, close.

An engine module registers an `EngineSpec` (what it supports, importable without torch) and the
`Engine` class that does the work (imported only inside the trial's child process).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The registry the engines register into lives in autoinfer.registry, which the config checks
# engine names against without importing the engines; TrialPoint lives with the space's dimensions.
from autoinfer.registry import ENGINES as ENGINES
from autoinfer.spaces.dimensions import DraftSpec, HardwareSpec
from autoinfer.spaces.point import TrialPoint as TrialPoint

if TYPE_CHECKING:
    from autoinfer.config import Config


@dataclass(frozen=True)
class EngineSpec:
    """What an engine can do; the search space consults this before sampling."""

    name: str
    module: str  # import path of the module defining the Engine subclass `ENGINE`
    quantizations: tuple[str, ...]
    draft_kinds: tuple[str, ...]
    hardware_kinds: tuple[str, ...]
    # Largest batch that a drafted (speculative) generation accepts; 1 for HF assisted generation.
    draft_max_batch: int = 1
    # Whether `model:LEVEL` (the target at another level) and `model:SOURCE@LEVEL` drafts run here.
    draft_levels: bool = False
    # How the engine can run its graphs (space.compile_mode), first the default; () where the
    # dimension does not apply (the point's compile_mode is then "").
    compile_modes: tuple[str, ...] = ()
    # Quantizations the engine cannot run on a hardware kind, e.g. {"cpu": ("fp16",)}.
    unsupported: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The Python package the engine imports, and how to get it (checked before a study starts).
    package: str = "torch"
    install_hint: str = "pip install autoinfer"
    # Packages whose versions change what the engine measures (part of the study identity).
    version_packages: tuple[str, ...] = ()
    # Settings resolved per point that change a score beyond the point itself (e.g. the int8 backend).
    accuracy_settings: Callable[[Config, TrialPoint], dict[str, Any]] = lambda config, point: {}
    # Engine settings (config sections, not searched) that change what a trial measures, as
    # identity fields `engine.<name>.<key>`: a study resumed with other values is refused.
    identity_settings: Callable[[Config], dict[str, str]] = lambda config: {}
    # Hardware kinds this installation can actually use (e.g. a CPU-only llama.cpp build cannot offload);
    # None: every kind in hardware_kinds. Returns (usable kinds, why the others are not).
    usable_hardware: Callable[[], tuple[tuple[str, ...], str]] | None = None
    # "module:function" building an exported trial's `runtime` block (how to serve it) from
    # (model section, point, the trial's info, engine_config); "" when the engine has none.
    export: str = ""

    def hardware_here(self) -> tuple[tuple[str, ...], str]:
        """The hardware kinds this engine can run on as installed, and why others are left out."""
        if self.usable_hardware is None:
            return self.hardware_kinds, ""
        kinds, why = self.usable_hardware()
        return tuple(k for k in self.hardware_kinds if k in kinds), why

    def quantizations_for(self, hardware: HardwareSpec) -> tuple[str, ...]:
        bad = self.unsupported.get(hardware.kind, ())
        return tuple(q for q in self.quantizations if q not in bad)

    def runs_draft(self, draft: DraftSpec) -> bool:
        if draft.kind not in self.draft_kinds:
            return False
        return self.draft_levels or not (draft.target_level or draft.level)

    def load_class(self) -> type[Engine]:
        cls: type[Engine] = importlib.import_module(self.module).ENGINE
        return cls


@dataclass(frozen=True)
class GenerationResult:
    """One batched generate call, timed from the moment the prompts are handed to the engine.

    Every generated token carries the time it became available, so a step that emits several
    tokens (an accepted draft) gives them all the same timestamp, and per-token figures (TPOT,
    latency) need no assumption about how many tokens a step made.
    """

    token_ids: tuple[tuple[int, ...], ...]  # per sequence, up to and including EOS, never padding
    token_times: tuple[tuple[float, ...], ...]  # per sequence, seconds since start, one per token
    total_s: float  # wall time of the whole call
    # Forward passes of the target after the one that produced the first token (plain decoding: one
    # per step for the whole batch; drafted: one per verification), and draft forward passes in
    # the same window. The roofline counts weight bytes per pass, not per emitted token.
    target_passes: int = 0
    draft_steps: int = 0
    draft_proposed: int = 0  # draft tokens proposed (speculative decoding only)
    draft_accepted: int = 0  # of which the target model accepted

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.token_times):
            raise ValueError("token_ids and token_times must list the same sequences")
        for ids, times in zip(self.token_ids, self.token_times, strict=True):
            if len(ids) != len(times):
                raise ValueError("every generated token needs one timestamp")

    @property
    def new_tokens(self) -> tuple[int, ...]:
        return tuple(len(ids) for ids in self.token_ids)

    @property
    def ttft_s(self) -> tuple[float, ...]:
        """Per sequence: start -> its first token."""
        return tuple(t[0] for t in self.token_times if t)

    @property
    def latency_s(self) -> tuple[float, ...]:
        """Per sequence: start -> its last token."""
        return tuple(t[-1] for t in self.token_times if t)

    @property
    def decode_s(self) -> float:
        """From the batch's first token to its last: the window the target_passes ran in."""
        firsts, lasts = self.ttft_s, self.latency_s
        return max(lasts) - min(firsts) if firsts else 0.0


# What `generate_ids` calls after each decoding pass, with each sequence's new token ids in prompt
# order (an empty list where a sequence got none). A row may run past its sequence's end (padding
# after an end token, tokens past max_new_tokens in a drafted pass): the caller cuts it, as
# `token_ids` is cut. `autoinfer serve` streams answers token by token from it.
StepCallback = Callable[[list[list[int]]], None]


class NewTokens:
    """Calls a StepCallback with what each sequence gained since the last call (nothing without one)."""

    def __init__(self, on_step: StepCallback | None, sequences: int) -> None:
        self.on_step = on_step
        self.seen = [0] * sequences

    def __call__(self, rows: Sequence[Sequence[int]]) -> None:
        if self.on_step is None:
            return
        new = [list(r[k:]) for r, k in zip(rows, self.seen, strict=True)]
        self.seen = [len(r) for r in rows]
        if any(new):
            self.on_step(new)


class Engine(abc.ABC):
    """A loaded model in one configuration. Subclasses are instantiated in the trial process."""

    # Whether plain decoding (draft=False) may run more sequences at once than the trial's batch
    # size: False where the loaded context or scheduler is sized for it (llama.cpp's sequences,
    # vLLM's max_num_seqs). The lossless check compares plain greedy across two batch sizes.
    plain_batch_free: bool = False

    def __init__(self, config: Config, point: TrialPoint) -> None:
        self.config = config
        self.point = point
        self.info: dict[str, Any] = {}  # facts worth logging (backend used, source dtype, ...)
        # Token ids that end a sequence besides the model's own end-of-generation tokens.
        self.stop_tokens: set[int] = set()
        self.draft_width = 0  # most tokens the draft proposes per verification (0: no draft)
        # Tells the search which stage the trial is in (progress display, time per stage). `load`
        # calls it with "prepare" while it converts or quantizes files, then with "load".
        self.on_stage: Callable[[str], None] = lambda stage: None

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights in the trial's quantization onto its hardware."""

    def generate(
        self, prompts: list[str], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True
    ) -> GenerationResult:
        """Greedy generation for all prompts as one batch; with the trial's draft unless draft=False
        (plain decoding of the same loaded target, which a drafted trial is checked against)."""
        return self.generate_ids([self.prompt_ids(p) for p in prompts], max_new_tokens, ignore_eos, draft)

    @abc.abstractmethod
    def generate_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, ignore_eos: bool = False, draft: bool = True,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:  # fmt: skip
        """`generate` on prompts already rendered to token ids (as `prompt_ids` makes them): what a
        server built on the engine calls (`autoinfer serve`), with `on_step` to stream each pass's
        tokens as they come. Timing starts inside this call."""

    @abc.abstractmethod
    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids `generate` feeds for a prompt (chat template and special tokens applied)."""

    @abc.abstractmethod
    def text(self, ids: Sequence[int]) -> str:
        """The text of generated token ids, end-of-generation tokens left out (what a server returns)."""

    def raw_ids(self, text: str) -> list[int]:
        """The token ids of `text` as it is, no chat template: what a completion route continues."""
        raise NotImplementedError(f"the {self.point.engine} engine does not tokenize raw text")

    def chat_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The token ids of a conversation (role/content dicts) rendered as the trial rendered its
        prompts, ending where the assistant's answer starts. Here: a single user message only,
        which is a trial prompt."""
        if len(messages) == 1 and messages[0]["role"] == "user":
            return self.prompt_ids(messages[0]["content"])
        raise NotImplementedError(
            "only a single user message is rendered here, as the trial rendered its prompts (no chat "
            "template renders a conversation: model.chat_template is off, or there is none)"
        )

    def end_ids(self) -> set[int]:
        """The token ids a sequence ends at (unless ignore_eos): what tells a served answer that
        stopped from one cut at max_tokens."""
        return set(self.stop_tokens)

    def context_tokens(self) -> int | None:
        """Tokens one sequence may hold, prompt and answer together, in the loaded configuration:
        what `autoinfer serve` refuses a request past (400). None where the engine cannot say."""
        return None

    @abc.abstractmethod
    def lm_eval_model(self) -> Any:
        """An lm-eval `LM` over this very loaded model (same weights, same quantization)."""

    @abc.abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of target weights read per forward pass (for the memory-bandwidth roofline)."""

    def draft_weight_bytes(self) -> int:
        """Bytes of weights read per draft step: 0 for drafts that read none (prompt lookup)."""
        return 0

    def score_facts(self) -> dict[str, Any]:
        """Runtime choices made at load that change the model's logits (part of the accuracy key)."""
        return {}

    def next_token_logits(self, prompt: str, prefix: Sequence[int], width: int, batch: int = 1) -> Any:
        """Logits for the token after `prompt` + `prefix`, in one of these pass shapes: width 1 feeds
        the prefix one token per pass, as plain decoding does; width > 1 puts its last token first
        in a pass of `width` tokens, as a verification does; width 0 evaluates prompt and prefix in
        a single pass; width -w feeds the prefix w tokens per pass (the KV cache a drafted history
        leaves, written by verifications of w tokens), for engines that support it. With batch B
        the passes carry B copies of the sequence, as a batch of B does (engines whose drafts run
        at batch 1 only may ignore it). Lets a drafted trial tell a
        floating-point tie from a broken draft by how much pass shape alone moves the target's
        logits; None where not supported."""
        return None

    def verify_pass_shapes(self) -> tuple[tuple[int, int], ...]:
        """The pass shapes, as `next_token_logits` (width, batch), that this engine's drafted
        generation evaluates a token in besides plain decoding's (1, batch size): the lossless check
        measures how far each moves the target's logits and tolerates a tie within no more than
        that. By default a verification of the whole batch (draft_width + 1 tokens of each
        sequence) and, at batch > 1, one of a single sequence (a drafted batch's last passes, once
        the other sequences have ended)."""
        width, batch = self.draft_width + 1, self.point.batch_size
        return ((width, batch), (width, 1)) if batch > 1 else ((width, 1),)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release memory; the child process exits afterwards anyway."""


class HFTokenizerEngine(Engine):
    """An engine that reads prompts through a Hugging Face tokenizer (`self.tokenizer`, set by its
    load): the chat template where the config asks for it and the tokenizer has one, token ids
    without added special tokens (the template holds them), text without special tokens."""

    tokenizer: Any

    def _templated(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The chat template's text for `messages`, ending with the assistant's turn; None where
        prompts go in without one (the config turns it off or the tokenizer has none)."""
        if self.config.model.chat_template and getattr(self.tokenizer, "chat_template", None):
            out: str = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
            return out
        return None

    def _render(self, prompt: str) -> str:
        text = self._templated([{"role": "user", "content": prompt}])
        return prompt if text is None else text

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.raw_ids(self._render(prompt))

    def raw_ids(self, text: str) -> list[int]:
        # No added special tokens (no BOS): exactly how a trial without a chat template fed its prompts.
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def chat_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        text = self._templated(messages)
        if text is not None:
            return self.raw_ids(text)
        return super().chat_ids(messages)  # no template: a single user message goes in as it is

    def end_ids(self) -> set[int]:
        eos = self.tokenizer.eos_token_id
        return super().end_ids() | ({eos} if eos is not None else set())

    def text(self, ids: Sequence[int]) -> str:
        out: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return out
