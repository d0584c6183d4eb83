"""Theory, Compare runs, Sample explorer, 2-D playground and Train under hostile links, stores and typed
values (AppTest).

The invariant for every value a page reads from its link: the page holds exactly that value, or it
holds a usable one and a note names the link's value (clamped, or the default instead). A value
typed into a widget is held as typed, or refused in one error line naming it, and nothing is
computed with it. Never an exception, never a file outside the checkpoint folders.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import apptest_support as support
from apptest_support import HOSTILE_QUERY_VALUES, hostile_store, number, stop_running
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import bounds
from smoothviz.errors import SmoothvizError
from smoothviz.sigma import R_MAX, SIGMA_MAX, SIGMA_MIN, canonical_spec, parse_sigma_spec
from smoothviz.store import Store

THEORY = "pages/1_Theory.py"
COMPARE = "pages/3_Compare_runs.py"
EXPLORER = "pages/4_Sample_explorer.py"
PLAYGROUND = "pages/5_2D_playground.py"
TRAIN = "pages/6_Train.py"
SLOW = settings(max_examples=10, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def open_page(page: str, **query: str):
    at = support.open_page(page, **query)
    assert not at.exception, [e.message for e in at.exception]
    return at


def rotated(keys: tuple[str, ...], shift: int) -> dict[str, str]:
    """Each key gets a different hostile value; over all shifts every key meets every value."""
    n = len(HOSTILE_QUERY_VALUES)
    return {key: HOSTILE_QUERY_VALUES[(shift + i) % n] for i, key in enumerate(keys)}


def notes(at) -> list[str]:
    return [w.value for w in at.warning]


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def named(at, key: str) -> bool:
    """A note on the page names the link's value for ``key``."""
    return any(w.startswith(f"The link's {key}=") for w in notes(at))


def check_one_line_messages(at) -> None:
    for text in notes(at) + errors(at):
        assert "\n" not in text and len(text) < 600, text[:200]


# ---------------------------------------------------------------- Theory
THEORY_RANGES = {"dim": (2, 150528), "sigma0": (0.01, 1.0), "pa": (0.5, 0.999999), "r": (0.0, R_MAX)}


def theory_value(at, key: str) -> float:
    return at.slider(key=key).value if key == "sigma0" else at.number_input(key=key).value


@pytest.mark.parametrize("shift", range(len(HOSTILE_QUERY_VALUES)))
def test_theory_holds_or_names_every_hostile_link_value(shift):
    query = {"preset": "custom", **rotated(tuple(THEORY_RANGES), shift)}
    at = open_page(THEORY, **query)
    check_one_line_messages(at)
    for key, raw in query.items():
        if key == "preset":
            continue
        held = theory_value(at, key)
        lo, hi = THEORY_RANGES[key]
        assert lo <= held <= hi, (key, raw, held)
        applied = number(raw) is not None and held == number(raw)
        assert applied != named(at, key), (key, raw[:40], held, notes(at))
    assert not errors(at)  # a link never leaves the page refusing: every value was applied or replaced
    assert len(support.plotly_figures(at)) == 4


def test_theory_names_an_unknown_preset():
    for raw in HOSTILE_QUERY_VALUES:
        at = open_page(THEORY, preset=raw)
        assert at.selectbox(key="preset").value == "cifar10"
        assert named(at, "preset"), (raw, notes(at))


@pytest.mark.parametrize(("key", "value", "line"), [
    ("pa", 1.0, "p_A = 1 is outside [0.5, 0.999999]"),
    ("pa", 0.3, "p_A = 0.3 is outside [0.5, 0.999999]"),
    ("r", -0.5, "r = -0.5 is outside [0, 1000]"),
    ("dim", 1, "N = 1 is outside [2, 150528]"),
])
def test_theory_refuses_a_typed_value_instead_of_computing_with_another(key, value, line):
    at = open_page(THEORY, preset="custom")
    before = dict(at.query_params)
    at.number_input(key=key).set_value(value).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key=key).value == value  # the widget shows what was typed
    assert [e for e in errors(at) if e.startswith(line)] and len(errors(at)) == 1, errors(at)
    assert not at.get("plotly_chart") and not at.metric  # nothing computed with another value
    assert dict(at.query_params) == before  # nothing written


def test_theory_extends_the_r_axis_to_a_chosen_r_beyond_it():
    at = open_page(THEORY, r="3")
    fig = next(f for f in support.plotly_figures(at) if f["layout"]["title"]["text"].startswith("Sound radius vs"))
    assert fig["layout"]["xaxis"]["range"] == [0.0, 3.0]
    assert max(fig["data"][0]["x"]) == pytest.approx(3.0)  # the curves are computed out to r as well
    assert any("extended to your r = 3" in c.value for c in at.caption)


_THEORY_TYPED = st.fixed_dictionaries({
    "dim": st.one_of(st.integers(-3, 200_000), st.sampled_from([2, 150528, 150529, 1])),
    "sigma0": st.integers(1, 100).map(lambda i: i / 100),
    "pa": st.one_of(st.floats(0.3, 1.2), st.sampled_from([0.5, 0.999999, 0.9999995, 1.0])),
    "r": st.one_of(st.floats(-1.0, 1200.0), st.sampled_from([0.0, R_MAX, R_MAX * (1 + 1e-9)])),
})


def test_theory_widget_values_are_applied_exactly_or_refused():
    at = open_page(THEORY, preset="custom")

    @SLOW
    @given(values=_THEORY_TYPED)
    def check(values):
        at.slider(key="sigma0").set_value(values["sigma0"])
        for key in ("dim", "pa", "r"):
            at.number_input(key=key).set_value(values[key])
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        bad = [k for k in ("dim", "pa", "r") if not THEORY_RANGES[k][0] <= values[k] <= THEORY_RANGES[k][1]]
        if bad:
            assert len(errors(at)) == len(bad), errors(at)
            assert not at.get("plotly_chart")
            return
        assert not errors(at), errors(at)
        dim, sigma0, p_a, r = values["dim"], values["sigma0"], values["pa"], values["r"]
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Cohen radius σ₀Φ⁻¹(p_A)"] == f"{sigma0 * norm.ppf(p_a):.4f}"
        sound = float(bounds.input_dependent_radius(p_a, sigma0, r, dim, rtol=1e-8))
        assert metrics["Sound radius at r"] == f"{sound:.4f}"
        worst = next(f for f in support.plotly_figures(at) if f["layout"]["title"]["text"].startswith("Worst case"))
        assert next(t for t in worst["data"] if t["name"] == "σ₁/σ₀ = 1")["y"][0] == pytest.approx(p_a, abs=1e-9)
        assert at.query_params.get("pa") in (None, repr(p_a)) and at.query_params.get("r") in (None, repr(r))

    check()


_LINK_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**20, 10**20).map(str),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_QUERY_VALUES),
)


@SLOW
@given(query=st.fixed_dictionaries({k: _LINK_TEXT for k in THEORY_RANGES}))
def test_any_theory_link_is_applied_exactly_or_named(query):
    at = open_page(THEORY, preset="custom", **query)
    for key, raw in query.items():
        held = theory_value(at, key)
        applied = number(raw) is not None and held == number(raw)
        assert applied != named(at, key), (key, raw, held, notes(at))
    assert not errors(at)


# ---------------------------------------------------------------- Compare runs
@pytest.fixture
def hostile(tmp_path):
    ids = hostile_store(tmp_path / "runs" / "test.db", tmp_path)
    yield ids
    stop_running(ids)


def run_ids(ids: dict[str, int]) -> list[int]:
    return [v for k, v in ids.items() if k != "running_pid"]


def test_compare_with_every_run_and_ids_that_do_not_exist(hostile):
    wanted = run_ids(hostile)
    at = open_page(COMPARE, runs=",".join(map(str, [*wanted, 4242, 4242, 99999999])) + ",x")
    check_one_line_messages(at)
    assert at.multiselect(key="runs_pick").value == wanted
    assert any(w.startswith("Not in the store") and "#4242" in w and "#99999999" in w for w in notes(at)), notes(at)
    assert any("'x'" in w and "not a run id" in w for w in notes(at)), notes(at)
    assert any(f"#{hostile['running']} running run is running" in i.value for i in at.info)
    # the runs without results are said to be empty; the others are drawn, the partial ones labelled so
    assert any(w.startswith("No results yet") and "pending run" in w and "empty done run" in w for w in notes(at))
    water = next(f for f in support.plotly_figures(at) if f["layout"]["title"]["text"] == "Certified accuracy vs radius")
    names = [t["name"] for t in water["data"] if not t["name"].startswith("ceiling")]
    assert f"#{hostile['cancelled']} cancelled run (cancelled, 5/12)" in names
    assert f"#{hostile['running']} running run (running, 4/12)" in names
    assert f"#{hostile['done']} done run" in names and not any("pending run" in n for n in names)
    table = at.dataframe[-1].value
    assert list(table.columns[:2]) == ["run", "R=0"]
    assert table["σ"].str.len().max() < 40  # the long kNN spec is shortened in the table


def test_compare_names_every_hostile_runs_value(hostile):
    for raw in HOSTILE_QUERY_VALUES:
        at = open_page(COMPARE, runs=raw)
        check_one_line_messages(at)
        picked = at.multiselect(key="runs_pick").value
        assert set(picked) <= set(run_ids(hostile))
        items = [t.strip() for t in raw.split(",") if t.strip()]
        if items and not picked:
            assert notes(at), raw[:40]  # nothing of the link was usable, and the page says why


def test_compare_does_not_preselect_runs_without_results(hostile):
    at = open_page(COMPARE)
    picked = at.multiselect(key="runs_pick").value
    assert len(picked) == 2 and hostile["pending"] not in picked and hostile["empty"] not in picked
    assert not any(w.startswith("No results yet") for w in notes(at))


def test_compare_notes_a_run_deleted_while_selected(hostile, tmp_path):
    at = open_page(COMPARE, runs=f"{hostile['done']},{hostile['knn']}")
    Store(tmp_path / "runs" / "test.db").delete_run(hostile["knn"])  # another tab deletes the kNN run
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("deleted" in w and f"#{hostile['knn']}" in w for w in notes(at)), notes(at)
    assert at.multiselect(key="runs_pick").value == [hostile["done"]]


LOG = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.42\t1\t0:00:01.5\n1\t7\t7\t0.1\t1\t1.25\n"


def test_compare_import_keeps_its_message_selects_the_run_and_empties_the_uploader(hostile, tmp_path):
    at = open_page(COMPARE, runs=str(hostile["done"]))
    at.file_uploader(key="upload").set_value(("cohen-log.tsv", LOG.encode(), "text/tab-separated-values")).run()
    at.button(key="import_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    new_id = max(run_ids(hostile)) + 1
    success = [s.value for s in at.success]
    assert success == [f"Imported cohen-log.tsv as run #{new_id} “cohen-log” with 2 points; it is selected below."]
    assert at.multiselect(key="runs_pick").value == [hostile["done"], new_id]
    assert at.query_params["runs"] == f"{hostile['done']},{new_id}"
    assert [u.key for u in at.file_uploader] == ["upload1"] and not at.file_uploader[0].value  # emptied
    assert at.button(key="import_button").disabled  # nothing to import twice
    at.radio(key="dist_kind").set_value("ECDF").run()  # another interaction: the message stays
    assert [s.value for s in at.success] == success

    # the same file again: refused by the store, naming the run that holds it; nothing is added
    for name in (None, "another name"):
        at.file_uploader(key="upload1").set_value(("cohen-log.tsv", LOG.encode(), "text/tab-separated-values")).run()
        if name:
            at.text_input(key="import_name@upload1@cohen-log.tsv").set_value(name).run()
        at.button(key="import_button").click().run()
        assert not at.exception, [e.message for e in at.exception]
        assert len(errors(at)) == 1 and f"already imported as run {new_id}" in errors(at)[0], errors(at)
        assert not at.success and at.multiselect(key="runs_pick").value == [hostile["done"], new_id]
    assert len(Store(tmp_path / "runs" / "test.db").runs()) == len(run_ids(hostile)) + 1


def test_compare_import_refuses_out_of_range_settings(hostile):
    at = open_page(COMPARE, runs=str(hostile["done"]))
    at.file_uploader(key="upload").set_value(("x.tsv", LOG.encode(), "text/tab-separated-values")).run()
    at.number_input(key="import_alpha").set_value(1.5).run()
    at.button(key="import_button").click().run()
    assert errors(at) == ["alpha 1.5 is outside (0, 1)"]
    assert len(at.multiselect(key="runs_pick").options) == len(run_ids(hostile))  # nothing imported


# ---------------------------------------------------------------- Sample explorer
EXPLORER_KEYS = ("sigma", "idx", "ckpt", "n", "dataset")
N_TEST = 360  # digits test split


@pytest.fixture
def digits_checkpoint(tmp_path, monkeypatch):
    return support.save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, "knn:0.3,0.5,10", 0.5)


def shown_spec(at) -> str | None:
    for caption in at.caption:
        if "σ function `" in caption.value:
            return caption.value.split("σ function `")[1].split("`")[0]
    return None


N_TRAIN = 1437  # digits training split


R_FINITE = 10.0  # the largest r the "valid" strategy draws: sigma_b*exp(r*(d - m)) stays finite on digits


def spec_validity(spec: str) -> bool | None:
    """True for a spec the explorer must apply, False for one it must refuse, None where the data decide.

    Without m= the mean neighbour distance leaves each training point out, so k may be at most
    N_TRAIN - 1 (N_TRAIN with m=). Digits distances differ from their mean by less than 5, so
    sigma(x) = sigma_b*exp(r*(d - m)) lies in [sigma_b*exp(-5r), sigma_b*exp(5r)]: inside the
    sigma limits (after min=/max=) the spec must apply, otherwise the chosen point decides.
    """
    try:
        params = parse_sigma_spec(spec)
    except SmoothvizError:
        return False
    if len(spec) > 200:
        return False
    if params["kind"] == "constant":
        return True
    if params["k"] > (N_TRAIN if params.get("m") is not None else N_TRAIN - 1):
        return False
    if params["m"] is not None:  # a given m moves d - m out of the digits' range
        return None
    spread = min(5.0 * params["r"], 700.0)
    low = max(params["sigma_b"] * math.exp(-spread), params["sigma_min"] or 0.0)
    high = min(params["sigma_b"] * math.exp(spread), params["sigma_max"] or math.inf)
    return True if SIGMA_MIN <= low and high <= SIGMA_MAX else None


@pytest.mark.parametrize("shift", range(len(HOSTILE_QUERY_VALUES)))
def test_explorer_holds_or_names_every_hostile_link_value(shift, digits_checkpoint):
    query = rotated(EXPLORER_KEYS, shift)
    at = open_page(EXPLORER, **query)
    check_one_line_messages(at)
    # the checkpoint is always one of the checkpoint folder's files, whatever the link says
    assert at.selectbox(key="ex_ckpt").value == str(digits_checkpoint)
    assert (query["ckpt"] == str(digits_checkpoint)) != named(at, "ckpt")
    assert (query["dataset"] == "digits") != named(at, "dataset")
    idx = at.number_input(key="ex_idx").value
    assert 0 <= idx < N_TEST
    exact = query["idx"].strip().lstrip("-").isdigit() and int(query["idx"]) == idx
    assert exact != (named(at, "idx") or any(w.startswith("Test index") for w in notes(at))), (query["idx"], notes(at))
    assert (query["n"] == str(at.select_slider(key="ex_n").value)) != named(at, "n")
    spec = query["sigma"].strip() or "knn:0.3,0.5,10"  # an empty link value means the checkpoint's own σ
    assert at.text_input(key="ex_sigma").value.strip() == spec
    assert spec_validity(spec) is not None  # the hostile values are clearly valid or clearly not
    if spec_validity(spec):
        assert not errors(at) and shown_spec(at) is not None
    else:
        assert len(errors(at)) == 1 and not at.get("plotly_chart"), errors(at)


_GOOD_SIGMA = st.floats(SIGMA_MIN, SIGMA_MAX)
_SIGMA = st.one_of(_GOOD_SIGMA, st.sampled_from([0.0, -1.0, SIGMA_MAX * 2, math.inf, math.nan]))
_SPECS = st.one_of(  # about half of them valid
    st.builds(lambda s: f"constant:{s!r}", _GOOD_SIGMA),
    st.builds(lambda s, r, k: f"knn:{s!r},{r!r},{k}", _GOOD_SIGMA, st.floats(0.0, R_FINITE),
              st.sampled_from([1, 10, N_TRAIN - 1])),
    st.builds(lambda s: f"constant:{s!r}", _SIGMA),
    st.builds(lambda s, r, k: f"knn:{s!r},{r!r},{k}", _SIGMA,
              st.one_of(st.floats(0.0, R_MAX), st.sampled_from([-1.0, R_MAX * 2])),
              st.sampled_from([0, 1, 10, N_TRAIN, N_TRAIN + 1])),
    st.text(max_size=30),
)


def test_any_sigma_spec_typed_in_the_explorer_is_applied_exactly_or_refused(digits_checkpoint):
    at = open_page(EXPLORER, n="1000")

    @SLOW
    @given(spec=_SPECS)
    @example(spec="KNN:54,10,1")  # sigma(x0) = 101.8 lies above SIGMA_MAX: refused, not applied
    @example(spec=f"knn:0.25,0.4,{N_TRAIN}")  # k leaves no training point out
    def check(spec):
        at.text_input(key="ex_sigma").set_value(spec).run()
        assert not at.exception, [e.message for e in at.exception]
        validity = spec_validity(spec.strip())
        if validity is None:  # applied or refused, but said either way
            assert (shown_spec(at) is not None) != (len(errors(at)) == 1), errors(at)
        elif validity:
            params = parse_sigma_spec(spec.strip())
            assert not errors(at), errors(at)
            if params["kind"] == "constant":
                assert shown_spec(at) == canonical_spec(params)
            else:  # the engine's spec adds the mean neighbour distance m it computed
                assert shown_spec(at).startswith(canonical_spec(params) + ",m=")
            assert at.query_params["sigma"] == spec.strip()
        else:
            assert len(errors(at)) == 1, errors(at)
            assert shown_spec(at) is None and at.query_params.get("sigma") != spec.strip()

    check()


@pytest.mark.parametrize(("key", "value", "line"), [
    ("ex_alpha", 0.7, "α = 0.7 is outside [1e-06, 0.5]."),
    ("ex_n0", 5, "n0 = 5 is outside [10, 1000]."),
])
def test_explorer_refuses_a_typed_setting(digits_checkpoint, key, value, line):
    at = open_page(EXPLORER, n="1000")
    at.number_input(key=key).set_value(value).run()
    assert errors(at) == [line] and not at.get("plotly_chart")


def test_explorer_clamps_a_typed_index_with_a_note(digits_checkpoint):
    at = open_page(EXPLORER, n="1000")
    at.number_input(key="ex_idx").set_value(5000).run()
    assert at.number_input(key="ex_idx").value == N_TEST - 1
    assert any(w.startswith(f"Test index 5000 is outside [0, {N_TEST - 1}]") for w in notes(at))


# ---------------------------------------------------------------- 2-D playground
PLAYGROUND_KEYS = ("dataset", "model", "train_sigma", "sigma", "r", "k", "n", "pts")
PLAYGROUND_NUMBERS = {"train_sigma": ("pg_train_sigma", 0.01, 1.0), "sigma": ("pg_sigma", 0.01, 1.0),
                      "r": ("pg_r", 0.0, 50.0), "k": ("pg_k", 1, 200)}


def test_playground_holds_or_names_every_hostile_link_value():
    # the grid resolution has its own test below: at the largest one every map costs seconds
    for raw in HOSTILE_QUERY_VALUES:
        at = open_page(PLAYGROUND, res="20", **{key: raw for key in PLAYGROUND_KEYS})
        check_one_line_messages(at)
        assert at.selectbox(key="pg_model").value == "train on the fly"  # never a file named by the link
        assert named(at, "dataset") and named(at, "model") and named(at, "n")
        for key, (widget, lo, hi) in PLAYGROUND_NUMBERS.items():
            held = at.number_input(key=widget).value
            assert lo <= held <= hi
            assert (number(raw) is not None and held == number(raw)) != named(at, key), (key, raw[:40], notes(at))
        assert not errors(at), errors(at)
        # pts: the test indices among the items (moons has 500 test points), each item that is not one named
        items = [t.strip() for t in raw.split(",") if t.strip()]
        assert at.multiselect(key="pg_points").value == [int(t) for t in items if t.isdigit() and int(t) < 500][:8]
        if any(not t.isdigit() or int(t) >= 500 for t in items):
            assert any(w.startswith("The link's pts has") or "left out" in w for w in notes(at)), (raw, notes(at))


def test_playground_holds_or_names_every_hostile_resolution():
    for raw in HOSTILE_QUERY_VALUES:
        at = open_page(PLAYGROUND, res=raw, n="100", pts="1")
        held = at.slider(key="pg_res").value
        assert 20 <= held <= 120 and held % 10 == 0
        applied = raw.isdigit() and int(raw) == held
        assert applied != (named(at, "res") or any(w.startswith("The grid resolution") for w in notes(at)))
        assert not errors(at), errors(at)


def test_playground_refuses_a_typed_sigma_of_zero():
    at = open_page(PLAYGROUND, res="20", n="100", pts="1")
    at.number_input(key="pg_sigma").set_value(0.0)
    at.button(key="FormSubmitter:pg_form-Update").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert errors(at) == ["σ = 0 is outside [0.01, 1]."] and not at.get("plotly_chart")
    assert at.query_params.get("sigma") != "0"


# ---------------------------------------------------------------- Train
START = "FormSubmitter:train_form-Start training"


def test_train_names_every_hostile_link_value():
    for raw in HOSTILE_QUERY_VALUES:
        at = open_page(TRAIN, dataset=raw, job=raw)
        check_one_line_messages(at)
        assert at.selectbox(key="tr_dataset").value == "digits" and named(at, "dataset")
        if raw.strip():  # no job has this id: said, whatever the text (a path is never read as one)
            assert any("training job" in m or "job id" in m for m in notes(at) + errors(at)), raw[:40]


@pytest.mark.parametrize(("key", "value", "line"), [
    ("tr_sigma", 0.0, "σ = 0 is outside [1e-06, 100]; training was not started."),
    ("tr_batch", 0, "batch size = 0 is outside [1, 4096]; training was not started."),
    ("tr_lr", 50.0, "learning rate = 50 is outside [1e-06, 10]; training was not started."),
])
def test_train_refuses_a_typed_value_and_starts_nothing(key, value, line):
    at = open_page(TRAIN)
    at.number_input(key=key).set_value(value)
    at.button(key=START).click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert errors(at) == [line] and "job" not in at.query_params


def test_train_disables_r_and_k_for_a_constant_sigma():
    at = open_page(TRAIN)
    assert at.radio(key="tr_kind").value == "constant"
    assert at.number_input(key="tr_r").disabled and at.number_input(key="tr_k").disabled
    at.radio(key="tr_kind").set_value("knn").run()
    assert not at.number_input(key="tr_r").disabled and not at.number_input(key="tr_k").disabled
    at.number_input(key="tr_r").set_value(-5.0)
    at.button(key=START).click().run()
    assert errors(at) == ["r = -5 is outside [0, 1000]; training was not started."]
    at.radio(key="tr_kind").set_value("constant").run()
    assert at.number_input(key="tr_r").disabled and at.number_input(key="tr_k").disabled
    at.number_input(key="tr_sigma").set_value(SIGMA_MAX * 2)
    at.button(key=START).click().run()  # r is not a constant σ's business: only σ is refused
    assert errors(at) == [f"σ = {SIGMA_MAX * 2:g} is outside [1e-06, 100]; training was not started."]
