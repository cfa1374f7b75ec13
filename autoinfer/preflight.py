"""Checks that need the disk or the hardware, run before a study starts (and by `validate`)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from autoinfer.config import Config
from autoinfer.errors import ConfigError
from autoinfer.hardware import target_problem
from autoinfer.spaces import HardwareSpec, enumerate_points
from autoinfer.spaces.dimensions import DraftSpec
from autoinfer.spaces.space import owned_hardware


def check(config: Config, source: str | None = None) -> int:
    """Raise ConfigError for the first problem; return the number of valid points in the space."""
    pinned = config.search.hardware
    for i, h in enumerate(pinned):
        if h not in config.space.hardware:
            msg = f"{h} is not one of space.hardware {config.space.hardware}"
            raise ConfigError(f"search.hardware[{i}]", msg, source)
        problem = target_problem(HardwareSpec.parse(h))
        if problem:
            raise ConfigError(f"search.hardware[{i}]", problem, source)
    for i, h in enumerate([] if pinned else config.space.hardware):
        problem = target_problem(HardwareSpec.parse(h))
        if problem:
            hint = "; a study over several machines: start each worker with --hardware for the targets it has"
            raise ConfigError(f"space.hardware[{i}]", problem + hint, source)
    from autoinfer.engines import ENGINES

    for i, name in enumerate(config.space.engine):
        engine = ENGINES.get(name)
        if importlib.util.find_spec(engine.package) is None:
            raise ConfigError(
                f"space.engine[{i}]", f"{name} needs the {engine.package!r} package: {engine.install_hint}", source
            )
    _check_compressor(config, source)
    m = config.model
    if "llama.cpp" in config.space.engine and not m.gguf_file:
        from autoinfer.engines.llamacpp.convert import converter_script
        from autoinfer.errors import TrialError

        try:
            converter_script()  # an HF checkpoint reaches llama.cpp through its converter
        except TrialError as e:
            raise ConfigError("model.source", str(e), source) from None
    _check_model_source(config, source)
    for i, d in enumerate(config.space.draft):
        spec = DraftSpec.parse(d)
        if spec.kind == "model" and not spec.target_level:
            _check_draft_source(config, spec.model, f"space.draft[{i}]", source)
    for i, t in enumerate(config.accuracy.tasks):
        for split, path in (t.data_files or {}).items():
            if not config.resolve(path).is_file():
                raise ConfigError(
                    f"accuracy.tasks[{i}].data_files.{split}", f"{config.resolve(path)} does not exist", source
                )
    _check_prompts(config, source)
    for i, name in enumerate([] if pinned else config.space.engine):
        if not owned_hardware(config, name):
            _, why = ENGINES.get(name).hardware_here()
            msg = f"{name} can run on none of {config.space.hardware}" + (f": {why}" if why else "")
            raise ConfigError(f"space.engine[{i}]", msg, source)
    n = len(enumerate_points(config))
    if n == 0 and pinned:
        raise ConfigError("search.hardware", f"no point of the space runs on {', '.join(pinned)} here", source)
    if n == 0:
        raise ConfigError("space", "no combination of engine, hardware, quantization and draft can run", source)
    _check_tasks(config, source)
    check_stores(config, source)
    return n


def _check_compressor(config: Config, source: str | None) -> None:
    """vLLM's compressed levels are made in llmcompressor's own environment: it must be there."""
    if "vllm" not in config.space.engine:
        return
    from autoinfer.engines.vllm.compress import SCHEMES, cpu_int4_problem, quantizer_problem

    on_cpu = any(HardwareSpec.parse(h).kind == "cpu" for h in config.space.hardware)
    for i, level in enumerate(config.space.quantization):
        if level in SCHEMES and (problem := quantizer_problem()):
            raise ConfigError(f"space.quantization[{i}]", problem, source)
        if level == "w4a16" and on_cpu and (problem := cpu_int4_problem()):
            raise ConfigError(f"space.quantization[{i}]", f"w4a16 on a CPU target: {problem}", source)


def check_stores(config: Config, source: str | None = None) -> None:
    """The study storage and the MLflow store must be usable before anything is written to them:
    a database URL that parses, has its driver and answers; a SQLite file whose folder can be made."""
    for where, url in (("search.storage", config.search.storage), ("mlflow.tracking_uri", config.mlflow.tracking_uri)):
        problem = _store_problem(url, connect=where == "search.storage")
        if problem:
            raise ConfigError(where, problem, source)


def _store_problem(url: str, connect: bool) -> str:
    from autoinfer.search.storage import redact

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        folder = path.parent if str(path) not in ("", ":memory:") else Path(".")
        while not folder.exists():  # the nearest folder that exists must let us make the rest
            folder = folder.parent
        try:  # access() says yes to root anywhere (even /proc): make and remove a file to know
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            return f"cannot create {path} ({folder}: {e.strerror})"
        return ""
    if url.startswith(("http://", "https://", "file:", "databricks")):
        return ""  # an MLflow tracking server or file store: MLflow reports its own errors
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
        parsed.get_dialect()
    except Exception as e:  # noqa: BLE001 - sqlalchemy's parse and driver errors alike
        return f"not a usable database URL ({type(e).__name__}: {redact(str(e)).splitlines()[0]})"
    if not connect:
        return ""
    try:
        args = {"connect_timeout": 5} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
        with sa.create_engine(parsed, connect_args=args).connect():
            pass
    except Exception as e:  # noqa: BLE001 - any failure to connect
        first = redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return f"cannot connect to {redact(url)}: {first}"
    return ""


def _check_chunks(text: str, where: str, source: str | None) -> None:
    """Every package of a `chunks:` source is installed (before any trial tries to assemble it)."""
    if not text.startswith("chunks:"):
        return
    from autoinfer.engines.sources import ChunkSet

    chunks = ChunkSet.parse(text)
    missing = chunks.missing()
    if missing:
        raise ConfigError(where, f"{len(missing)} of the {len(chunks.packages)} packages of {text} are not installed, "
                                 f"e.g. {missing[0]} ({chunks.install_hint()})", source)  # fmt: skip
    from autoinfer.errors import TrialError

    try:
        chunks.pieces()  # each package holds its piece (listed, not read)
    except TrialError as e:
        raise ConfigError(where, str(e), source) from None


def _check_model_source(config: Config, source: str | None) -> None:
    """`model.source` resolves to what the engines load: with model.gguf_file that file (in the
    package or directory; an assembling package's MODEL_NAME counts), else an HF checkpoint."""
    from autoinfer.engines.sources import assembled_name

    m = config.model
    _check_chunks(m.source, "model.source", source)
    if m.source.startswith("package:"):
        name = m.source.removeprefix("package:")
        d = _package_dir(name, "model.source", source)
        ggufs = _ggufs(d)
        built = assembled_name(name) if not m.gguf_file or not (d / m.gguf_file).is_file() else None
        if m.gguf_file and m.gguf_file != built:
            where = f"package {name} ({d})"
            _check_gguf(d / m.gguf_file, where, ggufs + ([built] if built else []), "model.gguf_file", source)
        elif not m.gguf_file and not (d / "config.json").is_file():
            names = ggufs + ([built] if built else [])
            if names:
                msg = (f"package {name} ({d}) holds no HF checkpoint (config.json); set model.gguf_file "
                       f"to its GGUF file ({', '.join(names[:5])})")  # fmt: skip
            else:
                msg = f"package {name} ({d}) holds no model: no config.json (an HF checkpoint) and no GGUF file"
            raise ConfigError("model.source", msg, source)
    elif m.source.startswith("chunks:"):
        return  # the pieces are there (_check_chunks); the assembled file is model.gguf_file
    elif m.gguf_file:
        local = config.resolve(m.source)
        if not local.is_dir():
            why = "is not a directory" if local.exists() else "does not exist"
            raise ConfigError("model.source", f"{local} {why} (gguf_file needs a local dir)", source)
        _check_gguf(local / m.gguf_file, str(local), _ggufs(local), "model.gguf_file", source)
    elif m.source.startswith(("./", "../", "/", "~")) and not config.resolve(m.source).exists():
        raise ConfigError("model.source", f"{config.resolve(m.source)} does not exist", source)


def _check_draft_source(config: Config, text: str, where: str, source: str | None) -> None:
    """A `model:` draft's source resolves as the engines resolve it (sources.source_as_gguf): a GGUF
    file, a directory with config.json or one GGUF file, a package likewise, a chunk set, a hub id."""
    from autoinfer.engines.sources import resolve_source, source_as_gguf
    from autoinfer.errors import TrialError

    _check_chunks(text, where, source)
    if text.startswith("chunks:"):
        return
    m = config.model
    if text.startswith("package:"):
        d = _package_dir(text.removeprefix("package:"), where, source)
        if text == m.source and m.gguf_file and not (d / m.gguf_file).is_file():
            return  # the target's own assembled GGUF, checked as model.source
    elif text.startswith(("./", "../", "/", "~")) and not config.resolve(text).exists():
        raise ConfigError(where, f"draft model path {config.resolve(text)} does not exist", source)
    try:
        gguf = source_as_gguf(config, text)
    except TrialError as e:
        raise ConfigError(where, str(e), source) from None
    path = Path(resolve_source(config, text))
    if gguf is not None:
        _check_gguf(gguf, str(gguf.parent), [], where, source)
    elif path.is_dir() and not (path / "config.json").is_file():
        msg = f"draft {text}: {path} holds no model: no config.json (an HF checkpoint) and no GGUF file"
        raise ConfigError(where, msg, source)


def _package_dir(name: str, where: str, source: str | None) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a dotted name whose parent is not installed
        spec = None
    if spec is None:
        raise ConfigError(where, f"package {name!r} is not installed (pip install {name.replace('_', '-')})", source)
    if not spec.submodule_search_locations:
        raise ConfigError(where, f"{name!r} is a module, not a package directory holding model files", source)
    return Path(next(iter(spec.submodule_search_locations)))


def _ggufs(folder: Path) -> list[str]:
    """The GGUF files in a folder and its subfolders one level down, relative to it."""
    found = [*folder.glob("*.gguf"), *folder.glob("*/*.gguf")]
    return sorted(str(p.relative_to(folder)) for p in found if p.is_file())


def _check_gguf(path: Path, holder: str, known: list[str], where: str, source: str | None) -> None:
    """`path` is a GGUF file (by its magic bytes); where it is missing, say what `holder` has."""
    if not path.is_file():
        close = difflib.get_close_matches(path.name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        has = f"its GGUF files: {', '.join(known[:10])}" if known else "it holds no GGUF file"
        raise ConfigError(where, f"{holder} has no {path.name!r}{hint} ({has})", source)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(where, f"cannot read {path}: {e.strerror}", source) from None
    if magic != b"GGUF":
        raise ConfigError(where, f"{path} is not a GGUF file (it does not start with the GGUF magic)", source)


TASK_INDEX_FORMAT = 2  # bump when the fields kept of lm-eval's task index change


@functools.cache
def _task_index() -> tuple[dict[str, dict[str, Any]], str]:
    """lm-eval's task registry as the evaluator builds it (TaskManager with autoinfer's own tasks as
    include_path), reduced to what the checks read: {name: {kind, yaml, tags} and task_facts}.
    Indexing its ~14,000 YAML files takes seconds, so it is done once per installed lm-eval and kept
    in the cache (keyed by its version and every YAML file's size and mtime, autoinfer's included),
    and only for a config that names tasks."""
    from importlib import metadata

    from autoinfer.cache import atomic_file, cache_dir

    try:
        version = metadata.version("lm_eval")
        spec = importlib.util.find_spec("lm_eval")
    except (metadata.PackageNotFoundError, ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("accuracy.tasks", "needs lm-eval (pip install 'lm-eval>=0.4.10,<0.5')")
    from autoinfer.evaluators.accuracy import task_facts
    from autoinfer.evaluators.tasks import TASKS_DIR

    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    h = hashlib.sha256(f"{TASK_INDEX_FORMAT}\0{version}\0{root}\0{TASKS_DIR}\n".encode())
    for top in (root, TASKS_DIR):
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".yaml"):
                    st = os.stat(os.path.join(folder, f))
                    h.update(f"{folder}/{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    memo: Path | None = None
    with contextlib.suppress(OSError):  # an unwritable cache only costs the seconds
        memo = cache_dir("lm_eval") / f"tasks-{h.hexdigest()[:20]}.json"
    if memo is not None and memo.is_file():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(memo.read_text()), version
    from lm_eval.tasks import TaskManager

    index = {}
    for name, e in TaskManager(include_path=str(TASKS_DIR)).task_index.items():
        kind = getattr(getattr(e, "kind", None), "name", "UNKNOWN")  # lm_eval.tasks._index.Kind
        index[name] = {"kind": kind, "yaml": getattr(e, "yaml_path", None) is not None,
                       "tags": sorted(getattr(e, "tags", None) or ()),
                       **task_facts(getattr(e, "cfg", None), kind)}  # fmt: skip
    if memo is not None:
        with contextlib.suppress(OSError), atomic_file(memo) as tmp:
            tmp.write_text(json.dumps(index))
    return index, version


def task_index() -> dict[str, dict[str, Any]]:
    """lm-eval's tasks and autoinfer's own, each reduced to {kind, yaml, tags} and
    autoinfer.evaluators.accuracy.task_facts (cached per install; ConfigError without lm-eval)."""
    return _task_index()[0]


def _check_tasks(config: Config, source: str | None) -> None:
    """Each accuracy task is one lm-eval knows (or one of autoinfer's own) and whose result the
    evaluator can read: a task or a group (a tag has no result of its own) that reports the metric
    and filter that rank it; `data_files` and `max_gen_toks` apply to a task defined by a YAML file
    (max_gen_toks: a generative one); a code task needs accuracy.allow_code_execution."""
    from autoinfer.config import code_task_refusal
    from autoinfer.evaluators.accuracy import ranked_metric

    if not config.accuracy.tasks:
        return
    try:
        index, version = _task_index()
    except ConfigError as e:
        raise ConfigError(e.where, e.message, source) from None
    acc = config.accuracy
    for i, t in enumerate(acc.tasks):
        entry = index.get(t.name)
        if entry is None:
            close = difflib.get_close_matches(t.name, list(index), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"lm-eval {version} has no task {t.name!r}{hint} (`lm-eval ls tasks` lists its {len(index)})"
            raise ConfigError(f"accuracy.tasks[{i}].name", msg, source)
        kind = entry["kind"]  # TASK, PY_TASK, GROUP, TAG
        if kind == "TAG":
            members = sorted(n for n, e in index.items() if t.name in e["tags"])
            msg = (f"{t.name!r} is an lm-eval tag of {len(members)} tasks, which has no result of its own; "
                   f"name its tasks instead (e.g. {', '.join(members[:3])})")  # fmt: skip
            raise ConfigError(f"accuracy.tasks[{i}].name", msg, source)
        if entry.get("unsafe") and not acc.allow_code_execution:
            raise ConfigError(f"accuracy.tasks[{i}].name", code_task_refusal(t.name), source)
        what = {"PY_TASK": "a Python-defined task", "GROUP": "a group"}.get(kind, "not defined by a YAML file")
        if t.data_files and (kind != "TASK" or not entry["yaml"]):
            msg = f"{t.name} is {what}; data_files re-point a task defined by one YAML file"
            raise ConfigError(f"accuracy.tasks[{i}].data_files", msg, source)
        if t.max_gen_toks is not None and (kind != "TASK" or not entry["yaml"] or not entry.get("generative")):
            what = what if kind != "TASK" or not entry["yaml"] else "not a generative (generate_until) task"
            raise ConfigError(f"accuracy.tasks[{i}].max_gen_toks", f"{t.name} is {what}", source)
        metric, filt = ranked_metric(t, acc, entry).split(",", 1)
        where = f"accuracy.tasks[{i}].metric" if t.metric else "accuracy.metric"
        reported = entry["metrics"]
        if reported is not None and metric not in reported:
            has = f"reports {', '.join(reported)}" if reported else "has no aggregate_metric_list, so no result"
            raise ConfigError(where, f"{metric!r}: lm-eval's {t.name} {has}", source)
        filters = entry.get("filters") or ["none"]
        if kind == "TASK" and filt not in filters:
            raise ConfigError(where, f"{metric},{filt}: {t.name} has the filters {', '.join(filters)}", source)


def _check_prompts(config: Config, source: str | None) -> None:
    from autoinfer.errors import TrialError
    from autoinfer.evaluators.workload import BUILTIN_SETS, load_prompts

    p = config.workload.prompts
    if p.startswith("builtin:") and p not in BUILTIN_SETS:
        raise ConfigError("workload.prompts", f"unknown built-in set {p!r} (known: {', '.join(BUILTIN_SETS)})", source)
    if not p.startswith("builtin:") and not config.resolve(p).is_file():
        raise ConfigError("workload.prompts", f"{config.resolve(p)} does not exist", source)
    try:
        n = len(load_prompts(p, Path(config.base_dir)))
    except TrialError as e:
        raise ConfigError("workload.prompts", str(e), source) from None
    need = max(config.space.batch_size)
    count = config.workload.prompt_count
    if count is not None and count > n:
        raise ConfigError("workload.prompt_count", f"{count} is more than the {n} prompts in {p}", source)
    if (count or n) < need:
        msg = f"{p} holds {n} prompts but space.batch_size goes up to {need}; every batch size generates the same set"
        raise ConfigError("workload.prompts", msg, source)


def notes(config: Config) -> list[str]:
    """Things worth saying before a study starts that are not errors (points left out, and why)."""
    from autoinfer.engines import ENGINES

    out = []
    for name in config.space.engine:
        spec = ENGINES.get(name)
        usable, why = spec.hardware_here()
        dropped = [h for h in config.space.hardware if HardwareSpec.parse(h).kind in spec.hardware_kinds
                   and HardwareSpec.parse(h).kind not in usable]  # fmt: skip
        if dropped:
            out.append(f"{name} × {', '.join(dropped)} left out: {why}")
    return out


def busy_now(config: Config, seconds: float = 1.0) -> str | None:
    """Whether the machine is already too busy for one of this worker's CPU targets (a second of
    sampling /proc/stat while this process waits): said at the start of a search, since its trials
    would wait and measure again."""
    from autoinfer.evaluators.machine_load import available, sample_load

    targets = [HardwareSpec.parse(h) for h in (config.search.hardware or config.space.hardware)]
    cores = sorted({t.threads for t in targets if t.kind == "cpu"}, reverse=True)
    if not cores or not available():
        return None
    s = config.search
    reading = sample_load(cores[0], seconds)
    for n in cores:  # the widest target is the first to feel other processes
        r = dataclasses.replace(reading, target_cores=n)
        reason = r.busy_reason(s.max_other_cpu_pct, s.max_steal_pct)
        if reason:
            return f"for cpu:{n}, {reason}"
    return None
