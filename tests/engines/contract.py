"""The contract every engine passes: subclass `EngineContract` and say how to load one.

What it holds an engine to is what the measurements rely on: counted tokens stop at EOS (padding
never counts), a sequence's output does not depend on its batch companions, a drafted generation
is token for token the plain greedy one, and timestamps say when each token came out.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from autoinfer.engines import Engine

PROMPTS = [
    "List five fruits that are rich in vitamin C.",
    "Name the planets of the solar system in order from the Sun.",
    "Write a haiku about autumn leaves.",
]
# Text that repeats and ends inside the repeat, so prompt lookup has a match from the first step.
REPEATING = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the"


class EngineContract:
    """Subclasses set `drafts` (what this engine drafts with) and implement `make`."""

    drafts: tuple[str, ...] = ()
    # False where a drafted output may part from plain greedy decoding by rounding (vLLM in bf16:
    # a verification pass of k + 1 tokens rounds differently from one-token passes); there the
    # contract asks instead that the lossless check flag every parting.
    drafts_exact = True
    new_tokens = 16

    def make(self, tmp_path: Path, draft: str = "none", batch: int = 1) -> Engine:
        raise NotImplementedError

    @staticmethod
    def check_timestamps(g: Any, plain: bool) -> None:
        for ids, times in zip(g.token_ids, g.token_times, strict=True):
            assert len(ids) == len(times)
            assert 0 < times[0] and all(a <= b for a, b in itertools.pairwise(times))
            assert times[-1] <= g.total_s + 1e-6
        longest = max(g.new_tokens)
        if plain:  # one pass per step for the whole batch, each emitting one token per live sequence
            assert g.target_passes == longest - 1
        else:  # a verification emits at least one token
            assert 1 <= g.target_passes <= longest - 1

    def test_counts_stop_at_eos_in_the_middle_of_a_batch(self, tmp_path: Path) -> None:
        eng = self.make(tmp_path, batch=2)
        free = eng.generate(PROMPTS[:2], self.new_tokens, ignore_eos=True)
        assert free.new_tokens == (self.new_tokens, self.new_tokens)
        a, b = free.token_ids
        # A token the first sequence makes early and the second never makes: declared a stop token,
        # it must end the first sequence there (counted) while the second runs on.
        k = next(i for i in range(1, 6) if a[i] not in a[:i] and a[i] not in b)
        eng.stop_tokens.add(a[k])
        g = eng.generate(PROMPTS[:2], self.new_tokens)
        assert g.token_ids[0] == a[: k + 1] and g.new_tokens[0] == k + 1
        n1 = g.new_tokens[1]
        assert n1 > k + 1 and g.token_ids[1] == b[:n1]  # nothing after EOS, no padding, counted
        assert len(g.token_times[0]) == k + 1
        self.check_timestamps(g, plain=True)

    def test_each_pass_is_handed_out_as_it_is_made(self, tmp_path: Path) -> None:
        """`on_step` (what `autoinfer serve` streams from) gets every sequence's tokens pass by pass,
        in order: cut where the answer ends, they are the answer."""
        eng = self.make(tmp_path, batch=2)
        steps: list[list[list[int]]] = []
        g = eng.generate_ids([eng.prompt_ids(p) for p in PROMPTS[:2]], self.new_tokens, on_step=steps.append)
        assert len(steps) >= max(g.new_tokens) - 1 > 1  # not the whole answer at the end
        for i, ids in enumerate(g.token_ids):
            assert [t for step in steps for t in step[i]][: len(ids)] == list(ids)

    def test_identical_sequences_give_identical_outputs(self, tmp_path: Path) -> None:
        eng = self.make(tmp_path, batch=3)
        g = eng.generate([PROMPTS[0]] * 3, self.new_tokens, ignore_eos=True)
        assert g.token_ids[0] == g.token_ids[1] == g.token_ids[2]
        other = eng.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], self.new_tokens, ignore_eos=True)
        assert other.token_ids[0] == g.token_ids[0]  # companions do not change a sequence
        self.check_timestamps(other, plain=True)

    def test_weights_are_counted(self, tmp_path: Path) -> None:
        eng = self.make(tmp_path)
        assert eng.weight_bytes() > 0 and eng.draft_weight_bytes() == 0

    def test_drafted_output_equals_plain_greedy(self, tmp_path: Path) -> None:
        if not self.drafts:
            pytest.skip("this engine declares no drafts")
        for draft in self.drafts:
            eng = self.make(tmp_path, draft=draft)
            proposed = steps = 0
            for prompt in (REPEATING, *PROMPTS):
                drafted = eng.generate([prompt], self.new_tokens, ignore_eos=True)
                plain = eng.generate([prompt], self.new_tokens, ignore_eos=True, draft=False)
                if drafted.token_ids != plain.token_ids and not self.drafts_exact:
                    self.check_parting_is_flagged(eng, prompt)
                else:
                    assert drafted.token_ids == plain.token_ids, (draft, prompt)  # full length, not a prefix
                assert plain.draft_proposed == plain.draft_steps == 0
                assert 0 <= drafted.draft_accepted <= drafted.draft_proposed
                self.check_timestamps(drafted, plain=False)
                self.check_timestamps(plain, plain=True)
                proposed, steps = proposed + drafted.draft_proposed, steps + drafted.draft_steps
            assert proposed > 0, f"{draft} never proposed a token"
            if draft.startswith("prompt_lookup"):
                assert steps == 0 and eng.draft_weight_bytes() == 0
            else:  # a draft that reads weights: they are counted per draft step
                assert steps > 0 and eng.draft_weight_bytes() > 0

    @staticmethod
    def check_parting_is_flagged(eng: Engine, prompt: str) -> None:
        """The lossless check, at the workload's length, calls the draft lossless exactly when the
        drafted output is the plain one, and counts a parting beyond a tie only where they differ."""
        from autoinfer.evaluators.lossless import check_lossless

        wl = eng.config.workload
        drafted = eng.generate([prompt], wl.max_new_tokens, ignore_eos=wl.ignore_eos).token_ids
        plain = eng.generate([prompt], wl.max_new_tokens, ignore_eos=wl.ignore_eos, draft=False).token_ids
        check = check_lossless(eng, [prompt], drafted)
        assert check.lossless == (drafted == plain), check.detail
        assert check.diverged <= (drafted != plain)
        if not check.diverged:  # plain greedy against itself is measured only where a draft parted
            assert check.self_diverged is None

    def test_lm_eval_model_scores(self, tmp_path: Path) -> None:
        from lm_eval.api.instance import Instance

        lm = self.make(tmp_path).lm_eval_model()
        req = Instance("loglikelihood", doc={}, arguments=("Question: what is a whale?\nAnswer:", " a mammal"), idx=0)
        ((ll, greedy),) = lm.loglikelihood([req])
        assert ll < 0 and isinstance(greedy, bool)
