"""What the AppTest suites of the dashboard share: isolated state, opening a page, decoding its figures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from smoothviz import data, models

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # a page's first run imports torch and may train the playground's MLP


@pytest.fixture(autouse=True)
def fresh_app_state(tmp_path, monkeypatch):
    """A temporary results store per test, and no cache shared between tests."""
    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "runs" / "test.db"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def open_page(page: str, **query: str) -> AppTest:
    """The app after its first run, switched to ``page`` with ``query`` in the URL (``app.py``: the entry page)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    if page != "app.py":
        at.switch_page(page)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
    return at


def _decode(value):
    """Plotly 6 sends numeric arrays as {"dtype", "bdata"(, "shape")}; turn them back into lists."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            arr = arr.reshape([int(n) for n in str(value["shape"]).split(",")])
        return arr.tolist()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def plotly_figures(at: AppTest) -> list[dict]:
    """Every plotly chart on the page as a figure dict with plain lists, so tests can read its numbers."""
    return [_decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def save_digits_checkpoint(folder: Path, monkeypatch: pytest.MonkeyPatch, sigma: str, r: float) -> Path:
    """An untrained digits MLP saved in ``folder`` as if trained with ``sigma``; the pages look only there."""
    info = data.DATASET_INFO["digits"]
    folder.mkdir()
    model = models.build_model("mlp", info.input_shape, info.num_classes)
    models.save_checkpoint(folder / "digits-mlp.pt", model, {
        "dataset": "digits", "arch": "mlp", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "sigma": sigma, "sigma_params": {}, "r": r,
    })
    monkeypatch.setenv("SMOOTHVIZ_CHECKPOINTS", str(folder))
    return folder / "digits-mlp.pt"
