"""The MLflow UI in a real browser: two `dvc exp run -S train.lr=...` runs of the
tiny pipeline logged to a real `mlflow server`, then headless Chromium opens
the compare view (both runs, a val_loss plot), the val_loss history chart and
each run's samples/samples.md; and one run's page in the model-training view: its
logged model, registered version, datasets, source and system metrics. Saves the
compare view and the run page to docs/compare-runs.png and docs/run-page.png
(GPTPIPE_SCREENSHOT=<folder> elsewhere, GPTPIPE_SCREENSHOT= not at all).

Needs Debian's chromium + chromium-driver (scripts/install_browser.sh); without
them it skips locally, naming the reason, and fails in CI (CI=true)."""
from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from helpers import env_for, make_project, require_module, require_tool, run, tiny_text
from projects import ROOT
from gptpipe.files import sha256_file
from test_mlflow_server import start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RUNS = {"lr-2e-3": "2.0e-3", "lr-8e-3": "8.0e-3"}  # dvc exp name -> train.lr
WAIT_S = 90  # a page rendering on 2 busy cores; fail, never hang, past this
SCREENSHOT_MAX_BYTES = 300_000


def _save_screenshot(driver, tmp_path: Path, name: str) -> None:
    """Keep the page as docs/<name> (README.md and docs/mlflow.md show it), under the size cap."""
    png = driver.get_screenshot_as_png()
    (tmp_path / name).write_bytes(png)
    assert len(png) < SCREENSHOT_MAX_BYTES, f"screenshot {name}: {len(png)} bytes"
    folder = os.environ.get("GPTPIPE_SCREENSHOT", str(ROOT / "docs"))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / name, Path(folder) / name)


@pytest.fixture
def browser(request, tmp_path):
    for tool in (CHROMIUM, CHROMEDRIVER):
        require_tool(str(tool), "`bash scripts/install_browser.sh` (Debian chromium, "
                                "chromium-driver; .ci/run runs it)")
    webdriver = require_module("selenium.webdriver", "`pip install -e '.[dev]'` (make test)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    request.addfinalizer(driver.quit)
    driver.set_page_load_timeout(WAIT_S)
    return driver


def _text(driver) -> str:
    """All text, including rows scrolled out of view (innerText skips those)."""
    return driver.execute_script("return document.body.textContent") or ""


def _wait_for_text(driver, *needles: str, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
            lambda d: all(n in _text(d) for n in needles))
    except TimeoutException:
        text = _text(driver)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"{what}: {missing} not shown after {WAIT_S} s at "
                             f"{driver.current_url}; page text: {text[:2000]!r}") from None


def _wait_for(driver, css: str, what: str, count: int = 1):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
            lambda d: (found := d.find_elements(By.CSS_SELECTOR, css))
            and len(found) >= count and found)
    except TimeoutException:
        raise AssertionError(f"{what}: no {css!r} after {WAIT_S} s at "
                             f"{driver.current_url}") from None


def _scroll_to_metric_link(driver, metric: str):
    """The compare view's link to `metric`'s chart. Its metrics table renders the rows
    in view only (the system/* metrics come first): scroll down until it shows."""
    import time

    from selenium.webdriver.common.by import By

    css = f"a[href*='metric=%22{metric}%22']"
    _wait_for(driver, "a[href*='metric=%22']", "the compare view's metric links")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found:
            return found[0]
        links = driver.find_elements(By.CSS_SELECTOR, "a[href*='metric=%22']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", links[-1])
        time.sleep(0.5)
    raise AssertionError(f"{metric} link: not in the compare view's metrics table after "
                         f"{WAIT_S} s of scrolling at {driver.current_url}")


def _log_two_runs(tmp_path: Path, server_url: str) -> tuple[Path, list[str]]:
    """The real pipeline, twice, as experiments differing in train.lr only."""
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    env = env_for(project, MLFLOW_TRACKING_URI=server_url,
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    run_ids = []
    for name, lr in RUNS.items():
        run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], project, env=env)
        run_ids.append(json.loads((project / "reports/mlflow_run.json").read_text())["run_id"])
    assert len(set(run_ids)) == 2, run_ids
    return project, run_ids


def _close_assistant_panel(driver) -> None:
    from selenium.webdriver.common.by import By

    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if close.is_displayed():  # the assistant side panel: not what we show
            close.click()


def _show_val_loss_in_parallel_plot(driver) -> None:
    """Add val_loss to the parallel-coordinates plot's metrics (it starts with one)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _close_assistant_panel(driver)
    metrics_select = driver.find_elements(By.CSS_SELECTOR, "input[role='combobox']")[-1]
    metrics_select.click()
    metrics_select.send_keys("val_loss")
    metrics_select.send_keys(Keys.ENTER)
    metrics_select.send_keys(Keys.ESCAPE)


@pytest.mark.slow
def test_compare_view_shows_both_runs_their_val_loss_and_samples(request, tmp_path,
                                                                 browser):
    from selenium.webdriver.common.by import By

    server = start_server(request, tmp_path / "mlflow-server")
    project, run_ids = _log_two_runs(tmp_path, server.url)
    exp_id = server.get("/api/2.0/mlflow/experiments/get-by-name",
                        experiment_name="gptpipe")["experiment"]["experiment_id"]
    names = list(RUNS)

    # 1. The compare view: both runs, their lr, a val_loss row, a plot.
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids),
                                    "experiments": json.dumps([exp_id])})
    compare_url = f"{server.url}/#/compare-runs?{query}"
    browser.get(compare_url)
    _wait_for_text(browser, "Comparing 2 Runs", *names, *run_ids, "val_loss",
                   what="compare view")
    text = _text(browser)
    assert "0.002" in text and "0.008" in text  # train.lr of each run
    _wait_for(browser, ".js-plotly-plot", "compare view's parallel-coordinates plot")
    _show_val_loss_in_parallel_plot(browser)
    _wait_for_text(browser, "val_loss", what="compare view")
    plot = _wait_for(browser, ".js-plotly-plot", "parallel-coordinates plot")[0]
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(lambda d: "val_loss" in plot.text)
    _save_screenshot(browser, tmp_path, "compare-runs.png")

    # 2. The compare view's val_loss link: both runs' history on one chart.
    link = _scroll_to_metric_link(browser, "val_loss")
    browser.get(link.get_attribute("href"))
    _wait_for_text(browser, *(f"{n} (val_loss)" for n in names), "(step=30)",
                   what="val_loss chart")
    chart = _wait_for(browser, ".js-plotly-plot", "val_loss chart")[0]
    assert chart.find_elements(By.CSS_SELECTOR, "path.js-line"), "no lines in the chart"

    # 3. The compare view lists no per-run artifacts: each run's page shows samples.md.
    for name, run_id in zip(names, run_ids):
        browser.get(f"{server.url}/#/experiments/{exp_id}/runs/{run_id}"
                    "/artifacts/samples/samples.md")
        _wait_for_text(browser, name, "samples.md", "table.json", "Sample 1: prompt",
                       "temperature 0.8, top_k None", what=f"{name}'s samples.md")
    # the workspace holds the last run's samples: the page showed that very text
    last_sample = (project / "reports/samples.md").read_text().split("```text\n")[1]
    first_line = next(line for line in last_sample.splitlines() if line.strip())
    assert first_line in _text(browser), first_line


@pytest.mark.slow
def test_run_page_shows_logged_model_registered_version_and_datasets(request, tmp_path,
                                                                      browser):
    """One `dvc exp run` with mlflow.log_model on, against a real server: the run page,
    in MLflow's model-training view, lists what a user looks for."""
    from selenium.webdriver.common.by import By

    server = start_server(request, tmp_path / "mlflow-server")
    project = make_project(tmp_path / "proj", {"mlflow": {"log_model": True}},
                           corpus=tiny_text())
    env = env_for(project, MLFLOW_TRACKING_URI=server.url,
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                  # a train of seconds: sample CPU and memory every second, not every 10
                  MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    run(["dvc", "exp", "run", "-n", "run-page"], project, env=env)
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    digests = {name: sha256_file(project / path)[:12] for name, path in (
        ("train", "data/split/train.npy"), ("val", "data/split/val.npy"))}
    digests["corpus"] = json.loads((project / "reports/download.json").read_text())["sha256"][:12]

    # What the page will show, as the REST API has it.
    experiment = server.get("/api/2.0/mlflow/experiments/get-by-name",
                            experiment_name="gptpipe")["experiment"]
    exp_id = experiment["experiment_id"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in \
        experiment["tags"]
    mlrun = server.get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    tags = {t["key"]: t["value"] for t in mlrun["data"]["tags"]}
    assert tags["mlflow.source.name"] == "stages/train.py"
    assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.user"]
    assert tags["gptpipe.dvc_experiment"] == "run-page"
    assert {d["dataset"]["name"]: d["dataset"]["digest"]
            for d in mlrun["inputs"]["dataset_inputs"]} == digests
    metrics = {m["key"]: m["value"] for m in mlrun["data"]["metrics"]}
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    val_history = server.get("/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                             metric_key="val_loss")["metrics"]
    best = min(val_history, key=lambda m: (m["value"], m["step"]))
    assert metrics["best_val_loss"] == best["value"]
    assert metrics["best_val_step"] == best["step"]
    versions = server.get("/api/2.0/mlflow/model-versions/search",
                          filter=f"run_id='{run_id}'")["model_versions"]
    assert [(v["name"], v["version"]) for v in versions] == [("gptpipe", "1")]

    # The run page. MLflow 3.17.2 picks its view from the GenAI / Model training
    # switch (the browser remembers it); the URL sets it here.
    browser.set_window_size(1500, 1500)  # Datasets to Logged models in one screenshot
    page = f"{server.url}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"
    browser.get(page)
    _wait_for_text(browser, "run-page", "Logged models (1)", "Registered models",
                   "Datasets", f"train ({digests['train']})", "+2",
                   "Created by", tags["mlflow.user"], "Source", "train.py", commit[:7],
                   what="run page")
    text = _text(browser)
    # the model-training view: its sidebar, not the GenAI one
    assert "Model registry" in text and "Evaluation runs" not in text
    logged = _wait_for(browser, "a[href*='/models/']", "the logged model's link")
    assert "model" in [a.text.strip() for a in logged]
    registered = _wait_for(browser, "a[href*='/models/gptpipe/versions/1']",
                           "the registered version's link")
    assert registered[0].is_displayed()
    # the other two datasets hide behind "+2"
    _close_assistant_panel(browser)
    more = [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='+2']")
            if e.is_displayed()]
    assert more, "no +2 after the first dataset"
    heading = next(e for e in browser.find_elements(By.CSS_SELECTOR, "h4")
                   if e.text.strip() == "Datasets")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", heading)
    more[0].click()
    _wait_for_text(browser, f"val ({digests['val']})", f"corpus ({digests['corpus']})",
                   what="the run's datasets")
    _save_screenshot(browser, tmp_path, "run-page.png")

    # The System metrics tab: CPU and memory charts.
    browser.get(page.replace("?", "/system-metrics?"))
    _wait_for_text(browser, "cpu_utilization_percentage", "system_memory_usage_megabytes",
                   what="system metrics tab")


def _start_gptpipe_ui(request, project: Path, env: dict) -> str:
    """`gptpipe ui --port N` in the project, as a user starts it: the link it prints."""
    import subprocess
    import time

    from servers import _stop_group
    from test_mlflow_server import free_port

    log = project / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["gptpipe", "ui", "--port", str(free_port())], cwd=project,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
    request.addfinalizer(lambda: _stop_group(proc))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        links = [line for line in log.read_text().splitlines()
                 if line.startswith("http://127.0.0.1:")]
        if links:
            return links[0]
        assert proc.poll() is None, f"gptpipe ui exited: {log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"gptpipe ui printed no link in 180 s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_gptpipe_ui_link_opens_model_training_view_descriptions_and_ranked_models(
        request, tmp_path, browser):
    """Two `dvc repro` runs (train.lr 2e-3, then 8e-3: no DVC name, so gptpipe names
    them), `gptpipe ui`, and its link: the Model training view, each run's Description,
    and the Models tab with both LoggedModels and their val metrics."""
    import yaml
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "proj", {"mlflow": {"log_model": True}},
                           corpus=tiny_text())
    env = env_for(project, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.pop("DVC_EXP_NAME", None)
    run_ids = []
    for lr in (2.0e-3, 8.0e-3):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["lr"] = lr
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["dvc", "repro"], project, env=env)
        run_ids.append(json.loads((project / "reports/mlflow_run.json").read_text())["run_id"])
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp_id = client.get_experiment_by_name("gptpipe").experiment_id
    runs = {r: client.get_run(r) for r in run_ids}
    names = [runs[r].info.run_name for r in run_ids]
    assert "lr=2e-3" in names[0] and "lr=8e-3" in names[1], names
    bpc = {r: runs[r].data.metrics["val.bits_per_char"] for r in run_ids}
    # the Models tab's query: the shipped LoggedModels, best val bits/char first
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        ranked = mlflow.search_logged_models(
            experiment_ids=[exp_id], output_format="list",
            order_by=[{"field_name": "metrics.val.bits_per_char", "ascending": True}])
    finally:
        mlflow.set_tracking_uri(None)
    assert [m.source_run_id for m in ranked] == sorted(run_ids, key=bpc.get)
    for model in ranked:
        shipped = {m.key: m for m in model.metrics}
        assert shipped["val.bits_per_char"].value == bpc[model.source_run_id]
        assert shipped["val.bits_per_char"].dataset_name == "val"
        assert shipped["val_loss"].step == 30  # the shipped weights' step, its val_loss

    link = _start_gptpipe_ui(request, project, env)
    assert link.endswith(f"/#/experiments/{exp_id}?workflowType=machine_learning"), link

    # 1. The link: the experiment's runs in the Model training view, not GenAI.
    browser.get(link)
    _wait_for_text(browser, *names, "Model registry", what="the experiment's runs")
    assert "workflowType=machine_learning" in browser.current_url
    assert "Evaluation runs" not in _text(browser)

    # 2. A run's page: its Description, built by train, evaluate and sample.
    base = link.split("/#/")[0]
    best = min(run_ids, key=bpc.get)
    browser.get(f"{base}/#/experiments/{exp_id}/runs/{best}?workflowType=machine_learning")
    _wait_for_text(browser, "Description", "Model: gpt, 1 layer × 2 heads × 32 wide",
                   "Data: corpus/corpus.txt", "Weights: step 30",
                   f"val bits/char: {bpc[best]:.4f}", "Sample:", what="the run's Description")

    # 3. The Models tab: both LoggedModels, their registered versions and the metric
    # columns grouped by dataset (the table renders only the metric columns in view,
    # so their values are checked through search_logged_models above).
    browser.set_window_size(4000, 1000)
    browser.get(f"{base}/#/experiments/{exp_id}/models?workflowType=machine_learning")
    _wait_for_text(browser, "gptpipe", "v1", "v2", "Dataset: ", *names, what="the Models tab")
    (tmp_path / "models-tab.png").write_bytes(browser.get_screenshot_as_png())


SWEEP = [("2.0e-3", 1), ("2.0e-3", 2), ("8.0e-3", 1), ("8.0e-3", 2)]  # (train.lr, train.seed)


@pytest.mark.slow
def test_runs_table_groups_a_sweeps_seeds_by_the_config_tag(request, tmp_path, browser):
    """2 configs x 2 seeds of the real pipeline: train tags each run with
    gptpipe.config (the config without the seed), and the experiment's runs table
    in the model-training view, grouped by that tag ("Group by"), shows 2 groups."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = start_server(request, tmp_path / "mlflow-server")
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    env = env_for(project, MLFLOW_TRACKING_URI=server.url,
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    for lr, seed in SWEEP:
        run(["dvc", "exp", "run", "-n", f"lr{lr}-seed{seed}", "-S", f"train.lr={lr}",
             "-S", f"train.seed={seed}"], project, env=env)
    exp_id = server.get("/api/2.0/mlflow/experiments/get-by-name",
                        experiment_name="gptpipe")["experiment"]["experiment_id"]
    found = server.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    tags = {r["info"]["run_name"]: {t["key"]: t["value"] for t in r["data"]["tags"]}
            ["gptpipe.config"] for r in found}
    assert len(tags) == 4 and len(set(tags.values())) == 2, tags
    assert tags["lr2.0e-3-seed1"] == tags["lr2.0e-3-seed2"]
    assert tags["lr8.0e-3-seed1"] == tags["lr8.0e-3-seed2"]
    # named by what differs from the shipped defaults: the tiny project's params, and lr
    assert " lr=8e-3 " in tags["lr8.0e-3-seed1"] and " lr=2e-3 " in tags["lr2.0e-3-seed1"]

    browser.get(f"{server.url}/#/experiments/{exp_id}?workflowType=machine_learning")
    _wait_for_text(browser, *(f"lr{lr}-seed{seed}" for lr, seed in SWEEP), "Group by",
                   what="the experiment's runs table")
    _close_assistant_panel(browser)
    trigger = next(b for b in browser.find_elements(By.XPATH, "//button[contains(., 'Group by')]")
                   if b.is_displayed())
    trigger.click()
    search = _wait_for(browser, "input[placeholder='Search']", "the group-by search box")[-1]
    search.send_keys("gptpipe.config")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def tick(driver) -> bool:  # the menu re-renders as the search narrows it
        try:
            for option in driver.find_elements(By.CSS_SELECTOR, "[role='menuitemcheckbox']"):
                if option.text.strip() == "gptpipe.config":
                    option.click()
                    return True
        except StaleElementReferenceException:
            pass
        return False

    WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(tick)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # close the menu
    try:
        _wait_for_text(browser, "Group by: gptpipe.config", *set(tags.values()),
                       what="the runs table grouped by gptpipe.config")
    finally:  # in the test's tmp dir only (no docs figure): look at it
        (tmp_path / "runs-grouped.png").write_bytes(browser.get_screenshot_as_png())
    # one group row per config ("Group: <tag>", its 2 runs under it)
    text = _text(browser)
    assert all(f"Group: {tag}" in text for tag in set(tags.values())), text[:2000]
    assert text.count("Group: ") == 2, text[:2000]
