"""What a reviewer sees in `mlflow ui`: the runs table, every trial, the frontier (real browser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import fake_config
from tests.requires import requires

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ui")
    (tmp / "c.yaml").write_text(yaml.safe_dump(fake_config(tmp)))
    r = subprocess.run(
        [sys.executable, "-m", "autoinfer", "search", "c.yaml"], cwd=tmp, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp


def test_experiment_opens_on_runs_and_the_parent_describes_the_frontier(fake_study: Path) -> None:
    client = MlflowClient(f"sqlite:///{fake_study}/mlflow.db")
    exp = client.get_experiment_by_name("autoinfer")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI overview
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("autoinfer.role") == "study")
    note = parent.data.tags["mlflow.note.content"]
    assert "Pareto frontier of t" in note and "| trial | configuration |" in note
    names = [r.info.run_name for r in runs if "autoinfer.trial" in r.data.tags]
    # 3 measured trials, plus any re-proposed point answered from storage: each is a run
    assert len(names) >= 3 and all(n.startswith("trial-") and " fake " in n for n in names)


# Debian's chromium and chromium-driver, which scripts/setup.sh --dev installs when run as root.
@requires(programs=("chromium", "chromedriver"))
def test_a_real_browser_lists_every_trial_and_renders_the_frontier(fake_study: Path) -> None:
    r = subprocess.run(
        [sys.executable, "scripts/check_mlflow_ui.py", "--tracking-uri", f"sqlite:///{fake_study}/mlflow.db",
         "--screenshots", str(fake_study / "shots")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{fake_study}/mlflow.db")
    trials = [r for r in client.search_runs([client.get_experiment_by_name("autoinfer").experiment_id])
              if "autoinfer.trial" in r.data.tags]  # fmt: skip
    assert f"ok: all {len(trials)} trial runs are listed" in r.stdout
    assert "ok: the parent run's pareto.html renders" in r.stdout
    assert (fake_study / "shots" / "frontier.png").stat().st_size > 10_000
