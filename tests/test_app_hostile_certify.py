"""The Overview and Certify pages under hostile links, stores and typed values (AppTest).

The invariant for every value a page reads from its link: either the page applies it exactly
(the widget holds it) or one error line names it and Run is disabled. Never an exception, never
a file outside the checkpoint folders.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apptest_support import HOSTILE_QUERY_VALUES, hostile_store, open_page, stop_running
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import data
from smoothviz.errors import SmoothvizError
from smoothviz.sigma import M_MAX, R_MAX, SIGMA_MAX, SIGMA_MIN, canonical_spec, parse_sigma_spec
from smoothviz.store import Store

CERTIFY = "pages/2_Certify.py"
QUERY_KEYS = ("sigma", "run", "n0", "n", "alpha", "seed", "points", "indices", "device", "dataset", "ckpt")
N_TRAIN = int(data.load_dataset("digits").train_x.shape[0])


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _refused(at, key: str) -> bool:
    label = "σ spec" if key == "sigma" else f"{key} ="
    return any(e.startswith(f"the link's {label}") for e in _errors(at))


def _shown_spec(at) -> str | None:
    for caption in at.caption:
        m = re.match(r"spec `([^`]+)`", caption.value)
        if m:
            return m.group(1)
    return None


def _applied(at, key: str, raw: str) -> bool:
    """Whether the page holds exactly the link's value for ``key``."""
    if key == "sigma":
        try:
            return _shown_spec(at) == canonical_spec(parse_sigma_spec(raw))
        except SmoothvizError:
            return False
    if key == "run":
        return any(h.value.startswith("Run #") for h in at.subheader)
    if key in ("dataset", "ckpt", "device"):
        return at.selectbox(key=key).value == raw
    if key == "indices":
        return at.text_input(key="indices").value == raw
    value = at.number_input(key=key).value
    try:
        return (float(raw) if key == "alpha" else int(raw)) == value
    except ValueError:
        return False


def _check_link(at, query: dict[str, str]) -> None:
    assert not at.exception, [e.message for e in at.exception]
    refused = []
    for key, raw in query.items():
        applied, named = _applied(at, key, raw), _refused(at, key)
        assert applied != named, f"{key}={raw[:60]!r}: applied={applied}, refusal shown={named}; {_errors(at)}"
        if named:
            refused.append(key)
    if any(k != "run" for k in refused):
        assert at.button(key="run_button").disabled


@pytest.mark.parametrize("shift", range(len(HOSTILE_QUERY_VALUES)))
def test_certify_applies_or_names_every_hostile_link_value(shift):
    # every key sees every hostile value once over the parametrization
    values = HOSTILE_QUERY_VALUES
    query = {key: values[(shift + i) % len(values)] for i, key in enumerate(QUERY_KEYS)}
    at = open_page(CERTIFY, **query)
    _check_link(at, query)
    assert all(len(e) < 600 for e in _errors(at))  # one line each, even for a 5,000-character value


def test_certify_applies_a_valid_link_exactly():
    query = {"dataset": "digits", "ckpt": "assets/digits-cnn-knn-0.25.pt", "sigma": "knn:0.3,0.1,10,min=0.05",
             "n0": "50", "n": "500", "alpha": "0.01", "seed": "3", "points": "7", "indices": "0-4", "device": "cpu"}
    at = open_page(CERTIFY, **query)
    _check_link(at, query)
    assert not _errors(at)
    assert not at.button(key="run_button").disabled


def test_certify_refused_link_values_stay_reported_until_changed_or_accepted():
    at = open_page(CERTIFY, sigma="knn:1,1e9,5", n="abc")
    assert _refused(at, "sigma") and _refused(at, "n")
    assert at.button(key="run_button").disabled
    at.number_input(key="n").set_value(2000).run()  # the user changes n: that refusal is settled
    assert _refused(at, "sigma") and not _refused(at, "n")
    assert at.button(key="run_button").disabled
    at.button(key="accept_shown").click().run()  # "use the values shown" settles the rest
    assert not _errors(at) and not at.button(key="run_button").disabled


def test_overview_ignores_hostile_links():
    for value in ("../../etc/passwd", "a" * 5000, "1e309"):
        at = open_page("app.py", **{key: value for key in QUERY_KEYS})
        assert not at.exception, [e.message for e in at.exception]


# ---------------------------------------------------------------- values typed into the widgets
@pytest.mark.parametrize(("key", "value", "named"), [
    ("sigma", 0.0, "σ = 0 is outside"),
    ("sigma", 1e6, "σ = 1e+06 is outside"),
    ("n", 0, "n = 0 is outside"),
    ("alpha", 0.0, "α = 0 is outside"),
])
def test_certify_refuses_a_typed_value_out_of_range_instead_of_keeping_the_previous_one(key, value, named):
    at = open_page(CERTIFY)
    ck = at.selectbox(key="ckpt").value
    widget = f"{key}@{ck}" if key == "sigma" else key
    if key == "sigma":
        at.radio(key=f"kind@{ck}").set_value("constant").run()
    at.number_input(key=widget).set_value(value).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key=widget).value == value  # the widget holds what was typed
    assert any(e.startswith(named) for e in _errors(at)), _errors(at)
    assert at.button(key="run_button").disabled


def test_certify_k_is_bounded_by_the_training_set():
    at = open_page(CERTIFY, sigma=f"knn:0.25,0.4,{N_TRAIN},m=1.5")
    assert not _errors(at) and _shown_spec(at) == f"knn:0.25,0.4,{N_TRAIN},m=1.5"
    ck = at.selectbox(key="ckpt").value
    at.number_input(key=f"k@{ck}").set_value(N_TRAIN + 1).run()
    assert any(e.startswith(f"k = {N_TRAIN + 1} is outside [1, {N_TRAIN}]") for e in _errors(at))
    assert at.button(key="run_button").disabled


# ---------------------------------------------------------------- σ specs around every limit
def _numbers(low: float, high: float) -> st.SearchStrategy[float]:
    edges = [low, high, low * (1 - 1e-9) if low else -1e-12, high * (1 + 1e-9), 0.0, -1.0, 1e9, math.nan, math.inf]
    return st.one_of(st.sampled_from(edges), st.floats(low, high, allow_nan=False))


_SIGMA = _numbers(SIGMA_MIN, SIGMA_MAX)
_SPECS = st.one_of(
    st.builds(lambda s: f"constant:{s!r}", _SIGMA),
    st.builds(
        lambda s, r, k, m, lo, hi: f"knn:{s!r},{r!r},{k}" + (f",m={m!r}" if m is not None else "")
        + (f",min={lo!r}" if lo is not None else "") + (f",max={hi!r}" if hi is not None else ""),
        _SIGMA, _numbers(0.0, R_MAX), st.sampled_from([0, 1, 20, N_TRAIN, N_TRAIN + 1, 10**6]),
        st.none() | _numbers(-M_MAX, M_MAX), st.none() | _SIGMA, st.none() | _SIGMA,
    ),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(spec=_SPECS)
@example(spec=f"knn:1e-06,0.0,{N_TRAIN}")  # k leaves no training point out: refused
@example(spec=f"knn:0.25,0.4,{N_TRAIN},m=1.5")  # with m given every training point may count
def test_any_sigma_spec_in_the_link_is_applied_exactly_or_refused(spec):
    try:
        params = parse_sigma_spec(spec)
        valid = params["kind"] == "constant" or params["k"] <= N_TRAIN
    except SmoothvizError:
        valid = False
    # without m= the mean neighbour distance leaves each training point out, so k = N_TRAIN is
    # within the k widget's range but refused by the kNN rule, in its own line
    one_short = valid and params["kind"] == "knn" and params["k"] == N_TRAIN and params["m"] is None
    at = open_page(CERTIFY, sigma=spec)
    assert not at.exception, [e.message for e in at.exception]
    if one_short:
        assert _errors(at) == [f"sigma spec '{canonical_spec(params)}': k={N_TRAIN} exceeds the {N_TRAIN - 1} other "
                               "training points (m is computed leaving each training point out; give m= to use all)"]
        assert at.button(key="run_button").disabled
    elif valid:
        assert _shown_spec(at) == canonical_spec(params)
        # a spec inside the limits may still give sigma(x) outside them on the chosen points:
        # that is the one other refusal, and it disables Run too
        others = [e for e in _errors(at) if not re.search(r"sigma\(x\) = \S+ at point \d+ is outside", e)]
        assert not others, others
        assert at.button(key="run_button").disabled == bool(_errors(at))
    else:
        assert _refused(at, "sigma"), _errors(at)
        assert at.button(key="run_button").disabled


# ---------------------------------------------------------------- a store with a run of every kind
@pytest.fixture
def hostile(tmp_path):
    ids = hostile_store(tmp_path / "runs" / "test.db", tmp_path)
    yield ids
    stop_running(ids)


@pytest.mark.parametrize("state", ["done", "knn", "cancelled", "failed", "pending", "empty", "imported",
                                   "interrupted", "running"])
def test_certify_shows_every_kind_of_run(hostile, state):
    at = open_page(CERTIFY, run=str(hostile[state]))
    assert not at.exception, [e.message for e in at.exception]
    assert any(h.value.startswith(f"Run #{hostile[state]} ") for h in at.subheader)
    assert not _errors(at) or state == "failed"
    if state in ("cancelled", "interrupted"):
        assert any(w.value.startswith(f"The run is {state} after") for w in at.warning)
        assert any("cannot be resumed: it records no checkpoint" in c.value for c in at.caption)
    if state in ("running", "pending"):
        assert len(at.get("progress")) == 1
    assert not any(re.search(r"\b(None|nan)\b", c.value) for c in at.caption), [c.value for c in at.caption]
    if state == "imported":  # a log records no n0
        assert any("n0 = —" in c.value for c in at.caption), [c.value for c in at.caption]


def test_overview_lists_a_store_with_every_kind_of_run(hostile):
    at = open_page("app.py")
    assert not at.exception, [e.message for e in at.exception]
    table = at.dataframe[0].value
    assert sorted(table["id"]) == sorted(v for k, v in hostile.items() if k != "running_pid")
    statuses = dict(zip(table["id"], table["status"]))
    assert statuses[hostile["interrupted"]] == "interrupted" and statuses[hostile["running"]] == "running"
    assert not any("is certifying" in link.proto.label for link in at.sidebar.get("page_link"))


def test_overview_refuses_to_delete_a_run_that_a_process_executes(hostile, tmp_path):
    at = open_page("app.py")
    at.selectbox(key="manage_run").set_value(hostile["running"]).run()
    at.button(key="delete_button").click().run()
    at.button(key="delete_confirm").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(f"run {hostile['running']}" in e.value and "cancel it" in e.value for e in at.error), _errors(at)
    assert hostile["running"] in set(Store(tmp_path / "runs" / "test.db").runs()["id"])


# ---------------------------------------------------------------- σ recorded in a checkpoint
@pytest.mark.parametrize(("trained_with", "applied"), [
    ("constant:20", True),  # large but inside the library's range: used as it is
    (f"knn:0.25,0.4,20,min={SIGMA_MIN!r}", True),
    ("constant:1000", False),  # outside [SIGMA_MIN, SIGMA_MAX]
    (f"knn:0.25,0.4,{N_TRAIN + 1}", False),  # more neighbours than training points
])
def test_a_checkpoint_sigma_is_applied_or_refused_visibly(tmp_path, monkeypatch, trained_with, applied):
    from apptest_support import save_digits_checkpoint

    save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, trained_with, 0.0)
    at = open_page(CERTIFY)
    assert not at.exception, [e.message for e in at.exception]
    if applied:
        assert _shown_spec(at) == canonical_spec(parse_sigma_spec(trained_with)) and not _errors(at)
    else:
        assert any(e.startswith(f"the checkpoint's σ spec '{trained_with}' is refused") for e in _errors(at)), \
            _errors(at)
        assert _shown_spec(at) == "constant:0.25"  # the fallback, shown
        assert at.button(key="run_button").disabled


@pytest.mark.parametrize("name", ["   ", "12345", "bad\x07name"])
def test_a_run_name_the_store_refuses_disables_run(name):
    at = open_page(CERTIFY)
    key = next(t.key for t in at.text_input if t.key.startswith("name@"))
    at.text_input(key=key).set_value(name).run()
    assert any(e.startswith("run name") for e in _errors(at)), _errors(at)
    assert at.button(key="run_button").disabled


def test_arriving_from_another_page_applies_the_link_and_sane_defaults():
    """Another page's widget keys may still be in the session when Certify starts: it must not
    take that for a rerun of its own (and leave its numbers unset)."""
    at = open_page("pages/1_Theory.py")
    at.session_state["dataset"] = "digits"  # as a page with a widget keyed "dataset" would leave it
    at.switch_page(CERTIFY)
    at.query_params["n"] = "777"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key="n").value == 777 and at.number_input(key="n0").value == 100
    assert not _errors(at)
