"""Open a study in the real MLflow UI with a headless browser, as a reviewer would, and check it.

Starts `mlflow ui --workers 1` on a free loopback port (stopped on exit), then with Chromium
(Debian's `chromium` and `chromium-driver`; selenium drives it):
  1. the experiment opens on its runs table, the study's parent run is listed, and expanding it
     lists every trial's run by name;
  2. the parent run's `pareto/pareto.html` renders in the UI's artifact view (a plotly plot with
     a drawn canvas inside the viewer's frame).
With --screenshots DIR it saves the runs table and the frontier plot as PNGs.

    python scripts/check_mlflow_ui.py --tracking-uri sqlite:///mlruns/mlflow.db [--screenshots docs]

Prints one line per check and exits 1 at the first that fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception:  # noqa: BLE001 - the page is still loading
            got = None
        if got:
            return got
        time.sleep(0.3)
    raise SystemExit(f"FAIL: {what} (waited {timeout:.0f} s)")


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    from autoinfer.search.isolation import die_with_parent

    mlflow = Path(sys.executable).with_name("mlflow")
    me = os.getpid()
    with open(log, "wb") as out:
        # One worker: `mlflow ui` starts four by default (plus their helpers), too many for 2 cores.
        argv = [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
        return subprocess.Popen(
            [*argv, "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: die_with_parent(me),
        )  # fmt: skip


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,950",
                "--enable-unsafe-swiftshader"):  # fmt: skip
        opts.add_argument(arg)
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    driver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    for path in (opts.binary_location, driver):
        if not Path(path).exists():
            raise SystemExit(f"FAIL: {path} is missing (apt-get install chromium chromium-driver)")
    return webdriver.Chrome(service=Service(driver), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", default="autoinfer")
    ap.add_argument("--screenshots", type=Path, help="save runs.png and frontier.png here")
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    from autoinfer.export.server import free_port

    client = MlflowClient(tracking_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"FAIL: no experiment {args.experiment!r} in {args.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("autoinfer.role") == "study"]
    if not parents:
        raise SystemExit("FAIL: no study run in the experiment")
    parent = parents[0]
    trials = sorted(
        (r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda name: int(name.split()[0].removeprefix("trial-")),
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        ui = start_ui(args.tracking_uri, port, Path(tmp) / "ui.log")
        driver = None
        try:
            wait("mlflow ui answers /health", lambda: urllib.request.urlopen(f"{base}/health", timeout=2).status == 200)
            driver = browser()
            driver.get(f"{base}/#/experiments/{exp.experiment_id}/runs")
            name = parent.info.run_name
            cell = f"//a[normalize-space(.)='{name}']/ancestor::div[contains(@class,'ag-cell')]"
            expand = wait(
                f"the runs table lists the study run {name!r}",
                lambda: (
                    driver.find_elements(By.XPATH, f"{cell}//button")
                    or driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
                ),
            )
            print(f"ok: the experiment opens on its runs table, with the study run {name!r}")
            expand[0].click()

            def listed() -> list[str] | None:
                text = driver.find_element(By.TAG_NAME, "body").text
                missing = [t for t in trials if t not in text]
                return None if missing else trials

            wait(f"expanding {name!r} lists all {len(trials)} trial runs", listed)
            print(f"ok: all {len(trials)} trial runs are listed by configuration ({trials[0]!r}, ...)")
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.screenshots / "runs.png"))
            rid = parent.info.run_id
            driver.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{rid}/artifacts/pareto/pareto.html")
            frame = wait("the artifact view shows pareto.html", lambda: driver.find_elements(By.TAG_NAME, "iframe"))
            driver.switch_to.frame(frame[0])
            wait(
                "pareto.html renders a plot",
                lambda: (
                    driver.find_elements(By.CSS_SELECTOR, ".plot-container")
                    and driver.find_elements(By.CSS_SELECTOR, ".plot-container canvas, .plot-container svg")
                ),
            )
            driver.switch_to.default_content()
            print("ok: the parent run's pareto.html renders in the artifact view")
            if args.screenshots:
                node = "//*[normalize-space(text())='pareto.png']"
                wait("the artifact tree lists pareto.png", lambda: driver.find_elements(By.XPATH, node))[0].click()
                wait("the artifact view shows pareto.png", lambda: driver.find_elements(By.CSS_SELECTOR, "img[src]"))
                time.sleep(1.0)
                driver.save_screenshot(str(args.screenshots / "frontier.png"))
                print(f"screenshots: {args.screenshots}/runs.png, {args.screenshots}/frontier.png")
        finally:
            if driver is not None:
                driver.quit()
            ui.terminate()
            try:
                ui.wait(10)
            except subprocess.TimeoutExpired:
                ui.kill()


if __name__ == "__main__":
    main()
