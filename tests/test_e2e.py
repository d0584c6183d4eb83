"""End to end in a real browser: `streamlit run app.py` headless, Playwright drives Debian chromium.

Visits every page, certifies a few digits points through the Certify page (a background job) and
finds the run in Compare runs. Screenshots go to tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard on a free port with an empty temporary results store; yields its base URL."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium package to run the browser tests)")
    tmp = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    env = dict(os.environ, SMOOTHVIZ_DB=str(tmp / "runs" / "e2e.db"), PYTHONUNBUFFERED="1")
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                log.flush()
                pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        jobs = tmp / "runs" / "jobs"
        for meta in jobs.glob("*.json") if jobs.exists() else ():
            pid = int(re.search(r'"pid": (\d+)', meta.read_text()).group(1))
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.set_default_timeout(60_000)
    yield p
    ctx.close()


def wait_idle(page, timeout: float = 90_000) -> None:
    """Connected, the script run finished, and no skeleton placeholders left."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', timeout=timeout)
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stSkeleton\"]').length === 0",
                           timeout=timeout)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_no_exception(page, where: str) -> None:
    boxes = page.get_by_test_id("stException")
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()[:2000]}"


def test_every_page_loads_without_exception(server, page):
    page.goto(server)
    wait_idle(page)
    assert_no_exception(page, "overview")
    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink-NavLink")
    n_pages = 1 + len([p for p in (ROOT / "pages").glob("*.py") if p.name != "__init__.py"])
    assert links.count() == n_pages
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    for href in hrefs:
        target = href if href.startswith("http") else server + "/" + href.lstrip("/")
        page.goto(target)
        wait_idle(page)
        name = target.rstrip("/").rsplit("/", 1)[-1] if target.rstrip("/") != server else "Overview"
        page.wait_for_timeout(500)
        assert_no_exception(page, name)
        shot(page, f"page-{name}")


def _checkpoint(pattern: str) -> str | None:
    found = sorted((ROOT / "assets").glob(pattern))
    return f"assets/{found[0].name}" if found else None


def certify_via_page(page, server: str, query: str, reload: bool = False) -> str:
    """Fill the Certify page from the URL, press Run, wait for the job to finish; returns the run id.

    With ``reload`` the browser reloads the page while the job runs: the run id in the URL must
    bring the same run back.
    """
    page.goto(f"{server}/Certify?{query}")
    wait_idle(page)
    assert_no_exception(page, "certify form")
    page.get_by_role("button", name="Run certification").click()
    page.wait_for_url(re.compile(r".*[?&]run=\d+"), timeout=60_000)
    run_id = re.search(r"[?&]run=(\d+)", page.url).group(1)
    if reload:
        page.reload()
        page.get_by_text(f"Run #{run_id}").first.wait_for(timeout=60_000)
        assert f"run={run_id}" in page.url
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done").wait_for(timeout=150_000)
    wait_idle(page)
    assert_no_exception(page, f"certify result of run {run_id}")
    assert page.get_by_test_id("stPlotlyChart").count() >= 1
    return run_id


def test_certify_through_the_page_and_compare(server, page):
    settings = "points=30&n0=50&n=500"
    constant = _checkpoint("digits-*constant-0.25*.pt")
    first = certify_via_page(page, server, settings + (f"&ckpt={constant}" if constant else ""), reload=True)
    shot(page, "certify-done")
    page.get_by_text("Compare this run with others").click()
    page.wait_for_url(re.compile(r".*Compare_runs.*runs=" + first), timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "compare")
    assert page.get_by_text(f"#{first}").count() >= 1

    runs = first
    knn = _checkpoint("digits-*knn-0.25*.pt")
    if knn:  # an input-dependent run next to the constant one
        second = certify_via_page(page, server, f"{settings}&ckpt={knn}")
        runs = f"{first},{second}"
    page.goto(f"{server}/Compare_runs?runs={runs}")
    wait_idle(page)
    assert_no_exception(page, "compare two runs")
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    page.wait_for_timeout(800)
    path = ARTIFACTS / "compare-runs.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    for tab in ("Radius distribution", "Sound vs naive", "Per class", "Table & downloads"):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(300)
        assert_no_exception(page, f"compare tab {tab}")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download table (CSV)").click()
    text = Path(download.value.path()).read_text()
    assert text.startswith("run,") and text.count("\n") == runs.count(",") + 2

    page.goto(server)  # the Overview lists the runs
    wait_idle(page)
    assert_no_exception(page, "overview with runs")
    assert page.get_by_test_id("stDataFrame").count() == 1


def test_theory_screenshot(server, page):
    page.goto(f"{server}/Theory")
    wait_idle(page)
    assert_no_exception(page, "theory")
    assert page.get_by_test_id("stPlotlyChart").count() == 4
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "theory.png"), full_page=False)
