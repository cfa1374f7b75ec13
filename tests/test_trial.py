from __future__ import annotations

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.trial import accuracy_key


def test_accuracy_key_tracks_what_changes_logits_only() -> None:
    c = parse_config({"model": {"source": "m"}, "accuracy": {"tasks": ["arc_easy"], "limit": 10}})
    base = TrialPoint("transformers", "fp32", "none", 1, "cpu:1")
    same = [
        TrialPoint("transformers", "fp32", "prompt_lookup:3", 1, "cpu:1"),
        TrialPoint("transformers", "fp32", "none", 16, "cpu:2"),
        TrialPoint("transformers", "fp32", "none", 1, "cpu"),
    ]
    different = [
        TrialPoint("transformers", "bf16", "none", 1, "cpu:1"),
        TrialPoint("llama.cpp", "Q8_0", "none", 1, "cpu:1"),
        TrialPoint("transformers", "fp32", "none", 1, "cuda:0"),
    ]
    assert all(accuracy_key(c, p) == accuracy_key(c, base) for p in same)
    assert all(accuracy_key(c, p) != accuracy_key(c, base) for p in different)
    other_eval = parse_config({"model": {"source": "m"}, "accuracy": {"tasks": ["arc_easy"], "limit": 20}})
    assert accuracy_key(other_eval, base) != accuracy_key(c, base)
