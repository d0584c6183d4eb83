"""A sweep in a real browser: started from the Certify page's Sweep section on the shipped digits
checkpoint, followed to the end, then explored on the Trade-offs page (heatmaps, the Pareto front,
error bars), with no exception anywhere and the sweep in the link."""

from __future__ import annotations

import re

import pytest

from e2e_support import assert_no_exception, shot, wait_idle
from e2e_support import browser, page, server  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.e2e


def _type(page, label: str, text: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(text)
    field.press("Enter")
    wait_idle(page)


def test_a_sweep_from_the_certify_page_to_the_tradeoff_views(server, page):
    page.goto(f"{server}/Certify?dataset=digits&ckpt=assets/digits-cnn-constant-0.25.pt&points=4&n=200&n0=10")
    wait_idle(page)
    assert_no_exception(page, "certify page")
    page.get_by_text("Sweep: a grid of σ functions and n on these points, as one job").click()
    _type(page, "kNN σ_b values", "0.2,0.3")
    _type(page, "kNN r values", "0,0.1")
    _type(page, "constant σ values", "")
    page.get_by_text(re.compile(r"2 σ functions|4 σ functions")).wait_for()
    page.get_by_role("button", name="Start sweep").click()
    done = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done: 4 runs")
    done.wait_for(timeout=240_000)
    wait_idle(page)
    assert_no_exception(page, "certify page after the sweep")
    assert re.search(r"[?&]sweep=1(&|$)", page.url), page.url
    shot(page, "sweep-done")

    page.get_by_text("Explore this sweep's trade-offs").click()
    wait_idle(page)
    assert_no_exception(page, "trade-offs page")
    assert re.search(r"[?&]sweep=1(&|$)", page.url), page.url
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    assert page.get_by_text(re.compile(r"Certified accuracy at R = 0\.25")).count() >= 1
    for tab in ("Pareto front", "Envelope", "Waterfall position", "Error bars", "Per class"):
        page.get_by_role("tab", name=tab).click()
        wait_idle(page)
        assert_no_exception(page, f"trade-offs tab {tab}")
    assert page.get_by_text("the data cannot tell them apart").count() + page.get_by_text("is higher").count() >= 1
    shot(page, "tradeoffs-error-bars")
