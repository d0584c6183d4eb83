"""Compare runs in a real browser: importing a reference-format log through the page.

After an import the success message names the run and its points and stays, the new run is
selected (and in the link) and drawn, the uploader is empty, and the same file imported again
is refused with a message naming the run that already holds it.
"""

from __future__ import annotations

import re

import pytest

from e2e_support import assert_no_exception, shot, wait_idle
from e2e_support import browser, page, server  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.e2e

LOG = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
       "0\t3\t3\t0.42\t1\t0:00:01.5\n1\t7\t-1\t0.0\t0\t1.25\n2\t1\t1\t0.1\t1\t0.5\n")


def _upload(page, path) -> None:
    uploader = page.get_by_test_id("stFileUploader")
    uploader.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    uploader.get_by_test_id("stFileChip").wait_for()
    wait_idle(page)


def test_import_selects_the_new_run_keeps_its_message_and_refuses_the_same_file(server, page, tmp_path):
    log = tmp_path / "browser-log.tsv"
    log.write_text(LOG)
    page.goto(f"{server}/Compare_runs")
    wait_idle(page)
    assert_no_exception(page, "compare on an empty store")

    _upload(page, log)
    page.get_by_role("button", name="Import", exact=True).click()
    success = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Imported browser-log.tsv as run #")
    success.wait_for()
    wait_idle(page)
    assert_no_exception(page, "compare after the import")
    run_id = re.search(r"as run #(\d+)", success.inner_text()).group(1)
    assert "with 3 points" in success.inner_text()
    # the new run is selected, in the link, and drawn
    picker = page.get_by_test_id("stMultiSelect")
    assert picker.get_by_text(re.compile(rf"#{run_id} browser-log")).count() == 1
    assert re.search(rf"[?&]runs={run_id}(&|$)", page.url), page.url
    page.get_by_test_id("stPlotlyChart").first.wait_for()
    # the uploader is empty, so a second click cannot import the file again
    assert page.get_by_test_id("stFileUploader").get_by_test_id("stFileChip").count() == 0
    assert page.get_by_role("button", name="Import", exact=True).is_disabled()
    # the message stays through other interactions and time
    page.get_by_role("tab", name="Radius distribution").click()
    page.get_by_text("ECDF", exact=True).click()
    wait_idle(page)
    page.wait_for_timeout(3500)
    assert success.count() == 1
    shot(page, "compare-imported")

    # the same file again: refused, naming the run that holds it; nothing added to the picker
    _upload(page, log)
    page.get_by_role("button", name="Import", exact=True).click()
    refusal = page.get_by_test_id("stAlertContentError").filter(has_text=f"run {run_id}")
    refusal.wait_for()
    wait_idle(page)
    assert_no_exception(page, "compare after the second import")
    assert success.count() == 0
    assert picker.get_by_text(re.compile(r"#\d+ browser-log")).count() == 1
    shot(page, "compare-import-refused")
