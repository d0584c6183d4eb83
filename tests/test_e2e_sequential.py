"""Sequential (anytime-valid) certification in a real browser: `streamlit run app.py` headless,
Playwright drives Debian chromium.

A sequential run through the Certify page shows what is certified so far and its samples while it
runs, and ends Done with its samples per point and stopping reasons; "certify live" on the Sample
explorer advances while the user watches and stops on Stop, with the sentence of that moment.
Screenshots go to tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import re

import pytest
from e2e_support import (  # noqa: F401  (pytest fixtures)
    ROOT,
    assert_no_exception,
    browser,
    page,
    server,
    shot,
    wait_idle,
)

pytestmark = pytest.mark.e2e


def _chart(page, title: str):
    """The (first) chart titled ``title``; while a fragment redraws, its old element may linger a moment."""
    return page.get_by_test_id("stPlotlyChart").filter(has_text=title).first


def test_a_sequential_run_through_the_certify_page_shows_its_partial_curve_and_ends_done(server, page):
    ckpt = sorted((ROOT / "assets").glob("digits-*constant-0.25*.pt"))
    query = "points=12&n0=100&n=20000&mode=radius&tolerance=0.01" + (f"&ckpt=assets/{ckpt[0].name}" if ckpt else "")
    page.goto(f"{server}/Certify?{query}")
    wait_idle(page)
    assert_no_exception(page, "certify form, sequential")
    page.get_by_text("Estimated time: at most").wait_for(timeout=60_000)
    page.get_by_role("button", name="Run certification").click()
    page.wait_for_url(re.compile(r".*[?&]run=\d+"), timeout=60_000)
    run_id = re.search(r"[?&]run=(\d+)", page.url).group(1)
    # while it runs: the curve of what is certified so far, and the samples against fixed n
    _chart(page, "Certified so far vs radius").wait_for(timeout=60_000)
    samples = page.get_by_text(re.compile(r"^Samples used so far [\d,]+ .* vs a fixed-n run's 12 points × 20,100"))
    samples.first.wait_for(timeout=60_000)
    shot(page, "sequential-running")
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done: 12 points").wait_for(timeout=240_000)
    wait_idle(page)
    assert_no_exception(page, f"sequential run {run_id} done")
    _chart(page, "Why points stopped").wait_for(timeout=30_000)
    _chart(page, "Samples per point").wait_for(timeout=30_000)
    assert page.get_by_text(re.compile(r"sequential \(radius tolerance=0\.01 mixture\), n0 = 100")).count() >= 1
    shot(page, "sequential-done")


def test_certify_live_on_the_explorer_advances_and_stops(server, page):
    page.goto(f"{server}/Sample_explorer?idx=17&n=1000")
    wait_idle(page)
    assert_no_exception(page, "explorer")
    slider = page.get_by_test_id("stSlider").filter(has_text="budget n_max")
    slider.get_by_role("slider").focus()
    slider.get_by_role("slider").press("End")  # the largest budget: the point surely still samples at Stop
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stSlider\"]')].some(s => s.innerText.includes("
        "'budget n_max') && s.querySelector('[data-testid=\"stSliderThumbValue\"]').innerText === '1,000,000')",
        timeout=30_000)
    wait_idle(page)
    page.get_by_role("button", name="Start").click()
    info = page.get_by_test_id("stAlertContentInfo").filter(has_text="at every sample count simultaneously")
    info.first.wait_for(timeout=60_000)

    def drawn() -> int:
        metric = page.get_by_test_id("stMetric").filter(has_text="samples drawn").first
        return int(metric.get_by_test_id("stMetricValue").inner_text().replace(",", ""))

    first = drawn()
    page.wait_for_function(  # the fragment draws the next step by itself
        "(n) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some(m => m.innerText.includes("
        "'samples drawn') && +m.querySelector('[data-testid=\"stMetricValue\"]').innerText.replace(/,/g, '') > n)",
        arg=first, timeout=60_000)
    _chart(page, "Confidence sequence for p_A").wait_for(timeout=30_000)
    _chart(page, "Sound certified radius vs samples").wait_for(timeout=30_000)
    shot(page, "explorer-live")
    page.get_by_role("button", name="Stop").click()
    said = page.get_by_text(re.compile(r"^Stopped by you after [\d,]+ samples"))
    said.first.wait_for(timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "explorer live stopped")
    stopped = int(re.search(r"after ([\d,]+) samples", said.first.inner_text()).group(1).replace(",", ""))
    assert stopped >= first and drawn() == stopped  # the sentence speaks of the samples shown
    assert page.get_by_role("button", name="Continue").count() == 1
    assert page.get_by_role("button", name="Stop").count() == 0
