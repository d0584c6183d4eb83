"""End to end in a real browser: `streamlit run app.py` headless, Playwright drives Debian chromium.

Visits every page, loads the example runs into the fresh store in one click, certifies digits
points through the Certify page (a background job; cancelled and resumed once) and finds the runs
in Compare runs. Screenshots go to tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from e2e_support import ARTIFACTS, ROOT, assert_no_exception, shot, wait_idle
from e2e_support import browser, page, server  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.e2e


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


def test_a_fresh_store_loads_the_example_runs_in_one_click(server, page):
    from smoothviz.examples import read_examples

    page.goto(server)
    wait_idle(page)
    assert page.get_by_test_id("stDataFrame").count() == 0  # the store is empty
    page.get_by_role("button", name="Load the example runs").click()
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Loaded").wait_for(timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "overview after loading the examples")
    assert page.get_by_test_id("stDataFrame").count() == 1
    expected = len(read_examples())
    assert page.get_by_text(f"Loaded {expected} example runs").count() == 1
    page.get_by_text("Compare the example runs").click()
    page.wait_for_url(re.compile(r".*Compare_runs.*runs="), timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "compare the example runs")
    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)
    shot(page, "examples-compare")


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


def test_a_typed_value_out_of_range_is_refused_not_silently_replaced(server, page):
    """In the browser a number field with a range keeps its old value when given one outside it;
    the page's fields must pass the typed value on, so that it is refused in one line."""
    page.goto(f"{server}/Certify")
    wait_idle(page)
    run = page.get_by_role("button", name="Run certification")
    assert run.is_enabled()
    for label, typed, message in (("σ (pixel units", "0", "σ = 0 is outside"),
                                  ("n (estimation samples)", "0", "n = 0 is outside")):
        field = page.get_by_label(re.compile("^" + re.escape(label)))
        field.fill(typed)
        field.press("Enter")
        page.get_by_test_id("stAlertContentError").filter(has_text=message).wait_for(timeout=30_000)
        wait_idle(page)
        assert not run.is_enabled()
        assert_no_exception(page, f"certify with {label} = {typed}")
        field.fill("0.25" if label.startswith("σ") else "1000")
        field.press("Enter")
        wait_idle(page)
        assert page.get_by_test_id("stAlertContentError").filter(has_text=message).count() == 0
        assert run.is_enabled()


def _progress_text(page) -> str:
    bar = page.get_by_test_id("stProgress")
    return bar.first.inner_text() if bar.count() else ""


def test_cancel_then_resume_shows_live_progress_until_done(server, page):
    """A user's report: after Cancel → Resume the page stayed on "cancelled" while the run went on."""
    constant = _checkpoint("digits-*constant-0.25*.pt")
    query = "points=50&n0=100&n=5000" + (f"&ckpt={constant}" if constant else "")
    page.goto(f"{server}/Certify?{query}")
    wait_idle(page)
    page.get_by_role("button", name="Run certification").click()
    page.wait_for_url(re.compile(r".*[?&]run=\d+"), timeout=60_000)
    run_id = re.search(r"[?&]run=(\d+)", page.url).group(1)
    page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=\"stProgress\"]');"
        " const m = b && b.innerText.match(/^(\\d+)\\/50 points/); return m && +m[1] >= 1 && +m[1] < 50; }",
        timeout=150_000)
    page.get_by_role("button", name="Cancel").click()
    cancelled = page.get_by_test_id("stAlertContentWarning").filter(has_text="cancelled after")
    cancelled.wait_for(timeout=60_000)
    stored = int(re.search(r"after (\d+) of 50", cancelled.inner_text()).group(1))
    assert 0 < stored < 50
    shot(page, "certify-cancelled")
    page.get_by_role("button", name="Resume").click()
    # at once: the live panel of the new job, not the cancelled state of the old one
    page.get_by_test_id("stProgress").wait_for(timeout=15_000)
    assert cancelled.count() == 0
    first = _progress_text(page)
    assert re.match(r"^\d+/50 points", first), first
    assert int(first.split("/")[0]) >= stored
    shot(page, "certify-resumed")
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done: 50 points").wait_for(timeout=240_000)
    wait_idle(page)
    assert_no_exception(page, f"run {run_id} after resume")
    page.get_by_text("Job log").click()
    log = page.get_by_test_id("stCode").first.inner_text()
    rest = 50 - stored
    assert f"{rest}/{rest} points (100%)" in log, log[-500:]  # the resumed job's own log


def test_theory_screenshot(server, page):
    page.goto(f"{server}/Theory")
    wait_idle(page)
    assert_no_exception(page, "theory")
    assert page.get_by_test_id("stPlotlyChart").count() == 4
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "theory.png"), full_page=False)
