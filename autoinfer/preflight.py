"""Checks that need the disk or the hardware, run before a study starts (and by `validate`)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

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
    m = config.model
    if "llama.cpp" in config.space.engine and not m.gguf_file:
        from autoinfer.engines.gguf_convert import converter_script
        from autoinfer.errors import TrialError

        try:
            converter_script()  # an HF checkpoint reaches llama.cpp through its converter
        except TrialError as e:
            raise ConfigError("model.source", str(e), source) from None
    _check_chunks(m.source, "model.source", source)
    if m.source.startswith("package:"):
        name = m.source.removeprefix("package:")
        if importlib.util.find_spec(name) is None:
            raise ConfigError("model.source", f"package {name!r} is not installed", source)
    elif m.gguf_file and not m.source.startswith("chunks:") and not config.resolve(m.source).exists():
        raise ConfigError(
            "model.source", f"{config.resolve(m.source)} does not exist (gguf_file needs a local dir)", source
        )
    elif m.source.startswith(("./", "../", "/", "~")) and not config.resolve(m.source).exists():
        raise ConfigError("model.source", f"{config.resolve(m.source)} does not exist", source)
    for i, d in enumerate(config.space.draft):
        spec = DraftSpec.parse(d)
        if spec.kind == "model":
            _check_chunks(spec.model, f"space.draft[{i}]", source)
        if (
            spec.kind == "model"
            and spec.model.startswith(("./", "../", "/"))
            and not config.resolve(spec.model).exists()
        ):
            raise ConfigError(
                f"space.draft[{i}]", f"draft model path {config.resolve(spec.model)} does not exist", source
            )
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
    check_stores(config, source)
    return n


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
