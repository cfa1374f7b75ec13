from __future__ import annotations

from tests.test_config import run_cli


def test_help_on_every_command() -> None:
    for cmd in ("search", "validate", "hardware", "pareto", "export"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_hardware_lists_cpu_with_labelled_meter() -> None:
    r = run_cli("hardware")
    assert r.returncode == 0, r.stderr
    assert "cpu:1" in r.stdout
    assert ("estimated:cpu-time" in r.stdout) or ("measured:rapl" in r.stdout)


def test_missing_config_file_exit_2() -> None:
    r = run_cli("validate", "/nonexistent/c.yaml")
    assert r.returncode == 2
    assert "cannot read config" in r.stderr and "Traceback" not in r.stderr
