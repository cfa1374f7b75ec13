"""tests/requires.py: a missing engine or model skips a test on a partial setup and fails it in CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requires import missing, require

REPO = Path(__file__).resolve().parents[1]
NOWHERE = "autoinfer_no_such_module_xyz"


@pytest.mark.parametrize("ci", ["true", "", None])
def test_require_skips_outside_ci_and_fails_in_it(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(outcome) as e:
        require(NOWHERE, "os")
    assert str(e.value).count("is not importable") == 1, e.value
    if ci:
        assert str(e.value).startswith(f"CI=true but {NOWHERE} is not importable: the setup step broke")


def test_missing_names_each_piece() -> None:
    assert missing(("os", "json.decoder"), ("sh",)) == ""
    problem = missing((NOWHERE, f"{NOWHERE}.sub"), ("no-such-program-xyz",), lambda: "no environment")
    assert problem == (
        f"{NOWHERE} is not importable; {NOWHERE}.sub is not importable; no-such-program-xyz is not on PATH; "
        "no environment"
    )


MODULE_MARKED = f"""
from tests.requires import requires

pytestmark = requires("{NOWHERE}")


def test_marked_module():
    pass
"""
MARKED_HERE = """
import pytest
from tests.requires import require, requires


@pytest.mark.parametrize("x", [1, pytest.param(2, marks=requires(check=lambda: "no llmcompressor"))])
def test_param(x):
    pass


def test_inside():
    require("os")
    require(programs=("no-such-program-xyz",))
"""


def _run(tmp_path: Path, ci: str | None) -> tuple[dict[str, int], str]:
    (tmp_path / "test_module_marked.py").write_text(MODULE_MARKED)
    (tmp_path / "test_marked_here.py").write_text(MARKED_HERE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.requires", "-p", "no:cacheprovider", "-rsfE", "."],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    summary = r.stdout.strip().splitlines()[-1]
    counts = {word.rstrip("s"): int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return counts, r.stdout


def test_the_marker_in_a_real_session(tmp_path: Path) -> None:
    """A module's pytestmark, a param's mark and an in-test call: skipped without CI; with CI=true
    the marked ones error at setup and the in-test one fails, none skipped."""
    local, out = _run(tmp_path, None)
    assert local == {"passed": 1, "skipped": 3}, out
    ci, out = _run(tmp_path, "true")
    assert ci == {"passed": 1, "failed": 1, "error": 2}, out
    assert f"CI=true but {NOWHERE} is not importable: the setup step broke" in out
    assert "CI=true but no llmcompressor: the setup step broke" in out
    assert "CI=true but no-such-program-xyz is not on PATH: the setup step broke" in out
