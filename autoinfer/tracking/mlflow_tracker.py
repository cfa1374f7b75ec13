"""MLflow: a parent run per study, a child run per trial, the Pareto frontier as parent artifacts.

Only the search process talks to MLflow (trial processes never do), through an explicit
MlflowClient rather than the fluent API's global active run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoinfer.config import Config
from autoinfer.hardware import fingerprint
from autoinfer.record import point_of, record_of, stage_seconds_of
from autoinfer.search.pareto import violations
from autoinfer.search.storage import ensure_sqlite_dir, redact
from autoinfer.tracking.plots import frontier_markdown, study_rows, write_plots, write_served_plot, write_table

# The UI opens an experiment of this kind on its runs table (the GenAI kind opens on an empty
# traces overview): these are measurement runs, not LLM traces.
KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND: "custom_model_development"}
_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.FAIL: "FAILED", TrialState.PRUNED: "KILLED"}


def _start_lock(uri: str) -> Any:
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        return FileLock(uri.removeprefix("sqlite:///") + ".lock")
    return contextlib.nullcontext()


def point_params(point: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in point.items()}


def _flat(prefix: str, obj: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
    return out


def study_runs(client: Any, experiment_id: str, study_name: str, storage: str) -> list[Any]:
    """The parent runs of a study (earliest first): tagged with its name and its storage URL
    (redacted), so two studies of one name in different storages are not mixed up."""
    flt = f"tags.`autoinfer.study` = '{study_name}' and tags.`autoinfer.role` = 'study'"
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=50)
    mine = [r for r in runs if r.data.tags.get("autoinfer.storage") == storage]
    return sorted(mine, key=lambda r: (r.info.start_time, r.info.run_id))


def trial_run_id(config: Config, number: int) -> str | None:
    """The MLflow run that holds trial `number` of this config's study (None if not logged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    if exp is None:
        return None
    for parent in study_runs(client, exp.experiment_id, config.study_name, redact(config.search.storage)):
        child = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`autoinfer.trial` = '{number}'"
        runs = client.search_runs([exp.experiment_id], filter_string=child, max_results=1)
        if runs:
            return str(runs[0].info.run_id)
    return None


class Tracker:
    def __init__(self, config: Config, study_name: str, storage: str) -> None:
        from mlflow.tracking import MlflowClient

        uri = config.mlflow.tracking_uri
        ensure_sqlite_dir(uri)
        self.config = config
        self.study_name = study_name
        self.storage = redact(storage)
        # Workers sharing a SQLite store must not create its tables, the experiment or the parent
        # run at the same moment; a lock file beside the database serialises that start-up.
        lock = _start_lock(uri)
        with lock:
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(config.mlflow.experiment)
            if exp is None:
                self.experiment_id = self._create_experiment(uri)
            else:
                self.experiment_id = exp.experiment_id
                if KIND not in exp.tags:
                    self.client.set_experiment_tag(self.experiment_id, KIND, EXPERIMENT_TAGS[KIND])
            self.parent_id = self._parent_run()
        self._children: dict[int, str] | None = None

    def _create_experiment(self, uri: str) -> str:
        """A tracking server keeps the artifacts itself (proxied, `mlflow-artifacts:`), so workers on
        other machines can write them; a local store gets the configured folder."""
        name = self.config.mlflow.experiment
        if uri.startswith(("http://", "https://")):
            try:
                return str(self.client.create_experiment(name, tags=EXPERIMENT_TAGS))
            except Exception:  # another worker created it first (RESOURCE_ALREADY_EXISTS)
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                return str(exp.experiment_id)
        art = Path(self.config.mlflow.artifact_location).expanduser().resolve()
        art.mkdir(parents=True, exist_ok=True)
        return str(self.client.create_experiment(name, artifact_location=art.as_uri(), tags=EXPERIMENT_TAGS))

    def _find_parents(self) -> list[Any]:
        return study_runs(self.client, self.experiment_id, self.study_name, self.storage)

    def _parent_run(self) -> str:
        """The study's parent run: found by tags (resume, other workers) or created."""
        found = self._find_parents()
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return str(found[0].info.run_id)
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.study_name,
            tags={"autoinfer.study": self.study_name, "autoinfer.role": "study", "autoinfer.storage": self.storage},
        )
        rid = str(run.info.run_id)
        # Workers starting together may each create one: the earliest wins, the others step back.
        first = self._find_parents()[0]
        if str(first.info.run_id) != rid:
            self.client.delete_run(rid)
            return str(first.info.run_id)
        cfg = self.config.model_dump(mode="json")
        params = _flat("", {k: v for k, v in cfg.items() if k not in ("mlflow",)}, {})
        params["search.storage"] = self.storage
        self._log(rid, params=params, tags={f"machine.{k}": str(v) for k, v in fingerprint().items()})
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "config.json").write_text(
                json.dumps(
                    {
                        **cfg,
                        "search": {**cfg["search"], "storage": self.storage},
                        "mlflow": {**cfg["mlflow"], "tracking_uri": redact(cfg["mlflow"]["tracking_uri"])},
                    },
                    indent=1,
                )
            )
            (Path(d) / "machine.json").write_text(json.dumps(fingerprint(), indent=1))
            self.client.log_artifacts(rid, d, "study")
        return rid

    def _log(
        self,
        run_id: str,
        metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None and math.isfinite(v)]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ms), len(ps), len(ts), 1), 100):  # log_batch takes <= 100 params
            self.client.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100], tags=ts[i : i + 100])

    def children(self) -> dict[int, str]:
        """Trial number -> child run id, for every trial already logged under this study."""
        if self._children is None:
            flt = f"tags.`mlflow.parentRunId` = '{self.parent_id}'"
            runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=50000)
            self._children = {int(r.data.tags["autoinfer.trial"]): str(r.info.run_id) for r in runs}
        return self._children

    def log_trial(self, t: FrozenTrial, log_path: str | None = None) -> None:
        if t.number in self.children():
            return
        point, rec = point_of(t), record_of(t)
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "autoinfer.trial": str(t.number),
            "autoinfer.state": t.state.name,
            "pareto": "false",
        }
        for key in ("fail_reason", "duplicate_of", "rejected", "interrupted"):
            if key in t.user_attrs:
                tags[f"autoinfer.{key}"] = str(t.user_attrs[key])
        params: dict[str, str] = point_params(point.as_dict()) if point else {}
        metrics: dict[str, float] = {}
        if rec is not None:
            tags["energy_source"] = rec.provenance.energy_source
            prov = dataclasses.asdict(rec.provenance)
            # A served trial's per-request timings are an artifact (below), not thousands of params.
            prov["served"] = {k: v for k, v in prov["served"].items() if k != "result"}
            params.update({f"info.{k}": v for k, v in _flat("", prov, {}).items()})
            metrics = dict(rec.metrics)
            for c, v in zip(self.config.constraints, violations(self.config, rec.metrics).values(), strict=True):
                metrics[f"constraint.{c.metric}{'_max' if c.op == '<=' else '_min'}_violation"] = v
            if rec.accuracy is not None and rec.accuracy.reused_from_trial is not None:
                params["info.accuracy_reused_from_trial"] = str(rec.accuracy.reused_from_trial)
        # Where the trial's wall time went, per stage as the progress display names them.
        metrics.update({f"time.{re.sub(r'[^0-9A-Za-z_]', '_', k)}_s": v for k, v in stage_seconds_of(t).items()})
        name = f"trial-{t.number} {point.label()}" if point else f"trial-{t.number}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        rid = str(run.info.run_id)
        self._log(rid, metrics=metrics, params=params)
        if log_path and Path(log_path).is_file():
            self.client.log_artifact(rid, log_path, "logs")
        if rec is not None and rec.accuracy is not None and rec.accuracy.items:
            self.client.log_dict(rid, rec.accuracy.items, "accuracy/items.json")  # paired comparisons offline
        if rec is not None and rec.accuracy is not None and rec.accuracy.generations:  # what was generated, judged
            self.client.log_dict(rid, rec.accuracy.generations, "accuracy/generations.json")
        if rec is not None and "result" in rec.provenance.served:  # every request: any SLO recomputed
            self.client.log_dict(rid, rec.provenance.served["result"], "served/requests.json")
        if rec is not None and rec.generations is not None:  # what a served copy must reproduce
            self.client.log_dict(rid, dataclasses.asdict(rec.generations), "outputs/generations.json")
        self.client.set_terminated(rid, _STATUS.get(t.state, "FAILED"))
        self.children()[t.number] = rid

    def sync(self, trials: Iterable[FrozenTrial], logs_dir: Path | None = None) -> None:
        """Log every one of `trials` that MLflow is missing (after a crash between the two stores,
        or another worker's death). The caller leaves out trials a live worker finished a moment
        ago and is about to log itself (two workers logging one trial would make two runs of it)."""
        self._children = None  # see what the other workers logged
        for t in trials:
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and t.number not in self.children():
                log = logs_dir / f"trial-{t.number}.log" if logs_dir else None
                self.log_trial(t, str(log) if log else None)

    def update_pareto(self, study: optuna.Study) -> None:
        """Re-rank every measured trial under the current config and refresh the parent's artifacts.

        Workers on several machines refresh the same artifacts. Each writes a whole snapshot read
        from the shared storage, and first records how many trials it holds (metric
        `pareto.trials`, step = that count). A writer that then finds a larger count recorded may
        have overwritten a newer snapshot, so it reads the study again and writes once more: the
        last snapshot written always holds every trial finished before it was read.
        """
        while True:
            finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
            n = len(finished)
            self._log_step(self.parent_id, "pareto.trials", n)
            self._write_pareto(study)
            newest = max((m.step for m in self.client.get_metric_history(self.parent_id, "pareto.trials")), default=n)
            if newest <= n:
                return

    def _log_step(self, run_id: str, key: str, step: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(run_id, metrics=[Metric(key, float(step), int(time.time() * 1000), step)])

    def _write_pareto(self, study: optuna.Study) -> None:
        rows = study_rows(self.config, study)
        front = {r["trial"] for r in rows if r["pareto"]}
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            write_table(rows, out)
            write_plots(rows, out, self.study_name)
            served = self.config.workload.served
            write_served_plot(rows, out, self.study_name, served.slo.tpot_s if served else None)
            self.client.log_artifacts(self.parent_id, d, "pareto")
        # The parent run's description (shown on its page) is the frontier table itself.
        self.client.set_tag(self.parent_id, "mlflow.note.content", frontier_markdown(rows, self.study_name))
        self._children = None  # other workers may have logged trials since we last looked
        for number, rid in self.children().items():
            self.client.set_tag(rid, "pareto", "true" if number in front else "false")
        self._log(self.parent_id, metrics={"n_trials": len(study.trials), "n_pareto": len(front)})

    # The search loop's events (autoinfer.search.study.Listener): run_search subscribes the tracker.

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial, log_path: str | None) -> None:
        self.log_trial(trial, log_path)
        self.update_pareto(study)

    def trial_skipped(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.log_trial(trial)

    def trial_interrupted(self, study: optuna.Study, trial: FrozenTrial, log_path: str | None) -> None:
        self.log_trial(trial, log_path)

    def catch_up(self, study: optuna.Study, logs: Path, trials: Sequence[FrozenTrial]) -> None:
        self.sync(trials, logs)

    def search_ended(self, study: optuna.Study, status: str, logs: Path, trials: Sequence[FrozenTrial]) -> None:
        if status != "FINISHED":
            self.finish(status)
            return
        self.sync(trials, logs)
        self.update_pareto(study)
        self.finish(study=study)

    def finish(self, status: str = "FINISHED", study: optuna.Study | None = None) -> None:
        """End the study's run, unless other workers still hold trials of it (the last one ends it)."""
        if study is not None and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        self.client.set_terminated(self.parent_id, status)
