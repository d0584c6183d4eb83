"""The Counterexamples page in a real browser: the default witness, its verdict and the sampling that
confirms it; a value typed out of range is refused in one line and accepted again; the real-data mode
loads the example runs and lists the refuted points of the digits kNN run with their images."""

from __future__ import annotations

import re

import pytest

from e2e_support import assert_no_exception, shot, wait_idle
from e2e_support import browser, page, server  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.e2e

VERDICT = "this classifier changes its answer at distance"


def test_the_default_witness_is_shown_sampled_and_confirmed(server, page):
    page.goto(f"{server}/Counterexamples")
    wait_idle(page)
    assert_no_exception(page, "counterexamples with defaults")
    page.get_by_test_id("stAlertContentError").filter(has_text=VERDICT).wait_for()
    assert page.get_by_test_id("stPlotlyChart").count() == 3  # slice, probabilities, band
    page.get_by_role("button", name=re.compile("^Sample f\\* in dimension 3,072")).click()
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Sampling confirms it").wait_for(timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "counterexamples after sampling")
    shot(page, "counterexamples-formula")


def test_a_typed_ratio_out_of_range_is_refused_then_accepted(server, page):
    page.goto(f"{server}/Counterexamples")
    wait_idle(page)
    field = page.get_by_label(re.compile("^σ₁/σ₀ = σ\\(x₁\\)/σ\\(x₀\\)"))
    field.fill("3")
    field.press("Enter")
    refused = page.get_by_test_id("stAlertContentError").filter(has_text="σ₁/σ₀ = 3 is outside [0.5, 2]")
    refused.wait_for(timeout=30_000)
    wait_idle(page)
    assert page.get_by_test_id("stAlertContentError").count() == 1  # one line, and no verdict computed
    assert page.get_by_test_id("stPlotlyChart").count() == 0
    assert_no_exception(page, "ratio 3")
    field.fill("1.04")
    field.press("Enter")
    page.get_by_test_id("stAlertContentError").filter(has_text=VERDICT).wait_for(timeout=30_000)
    wait_idle(page)
    assert refused.count() == 0


def test_the_real_data_mode_lists_refuted_points_of_the_digits_knn_run(server, page):
    page.goto(f"{server}/Counterexamples")
    wait_idle(page)
    page.get_by_text("Real data: the runs in the store").click()
    wait_idle(page)
    page.get_by_role("button", name="Load the example runs").click()
    wait_idle(page)
    run = page.get_by_test_id("stSelectbox").filter(has_text="Run")
    run.click()
    page.get_by_role("option", name=re.compile("digits-cnn-knn-0.25")).click()
    wait_idle(page)
    page.get_by_role("button", name="Search this run for counterexamples").click()
    page.get_by_test_id("stDataFrame").wait_for(timeout=120_000)
    wait_idle(page, timeout=120_000)
    assert_no_exception(page, "real-data search")
    refuted = page.get_by_test_id("stMetric").filter(has_text="refuted by a data pair")
    assert int(refuted.get_by_test_id("stMetricValue").inner_text().replace(",", "")) > 0
    assert re.search(r"[?&]run=\d+", page.url), page.url
    shot(page, "counterexamples-data")
