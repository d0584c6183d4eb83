"""Counterexamples: explicit base classifiers that break naive input-dependent certificates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import (
    PAGES,
    WARNING_ICON,
    entered_page,
    get_store,
    offer_examples,
    run_label,
    set_query,
    setup_page,
    shown,
    stop_on_error,
)
from pages._ui.numbers import DEFAULT_PRESET, DIM_PRESETS, MAX_DIM, link_note, link_number, refused_number
from smoothviz import bounds, plots_witness, witness
from smoothviz.sigma import R_MAX

setup_page("Counterexamples", ":material/gpp_bad:")

# (default, smallest, largest) of each number the page reads from a link or a widget. The defaults
# break the naive certificate in CIFAR-10's dimension: sigma1 4 % above sigma0 at half the naive radius.
NUMBERS = {
    "dim": (3072, 1, MAX_DIM),
    "sigma0": (0.25, 0.01, 1.0),
    "pa": (0.999, 0.5, 0.999999),
    "ratio": (1.04, 0.5, 2.0),
    "d": (0.386, 0.0, 10.0),
    "r": (0.1, 0.0, R_MAX),
}
NAMES = {"dim": "N", "sigma0": "σ₀", "pa": "p_A", "ratio": "σ₁/σ₀", "d": "d", "r": "r"}
MODES = ("formula", "data")
CHOOSE = ("pair", "worst")
N_CHOICES = (2000, 5000, 10000)
SAMPLED_DIM = 10_000  # above this dimension sampling draws SUBSAMPLED_N noisy copies only
SUBSAMPLED_N = 200
ALPHA = 0.001
VERIFY_POINTS = 12  # refuted points of a run checked by sampling on the page


def link_run() -> int | None:
    """The link's run id (None when absent; a note when it is not an id)."""
    raw = st.query_params.get("run")
    if raw is None:
        return None
    text = str(raw).strip()
    if text.isdigit() and len(text) <= 18:
        return int(text)
    link_note(f"The link's run={shown(raw)} is not a run id; pick a run below.")
    return None


@st.cache_data(max_entries=64, show_spinner=False)
def worst_in_band(p_a: float, sigma0: float, r: float, dim: int, d: float) -> tuple[float, float, float]:
    """(smallest breaking distance, most damaging sigma1 at d, its worst case) for an r-semi-elastic sigma.

    The binding sigma1 is an end of the band [sigma0 e^{-rd}, sigma0 e^{rd}] (Sukenik et al. 2022,
    Theorem 3; witness.search_band)."""
    band = witness.search_band(p_a, sigma0, r, dim)
    low, high = sigma0 * math.exp(-r * d), sigma0 * math.exp(min(r * d, 700.0))
    w_low, w_high = (float(bounds.worst_case_probability(sigma0, s, d, p_a, dim)) for s in (low, high))
    return (float(band.smallest_breaking_distance),) + ((low, w_low) if w_low <= w_high else (high, w_high))


@st.cache_data(max_entries=32, show_spinner=False)
def band_curves(p_a: float, sigma0: float, r: float, dim: int, d_max: float):
    distance = np.linspace(0.0, d_max, 121)[1:]
    low = bounds.worst_case_probability(sigma0, sigma0 * np.exp(-r * distance), distance, p_a, dim)
    high = bounds.worst_case_probability(sigma0, sigma0 * np.exp(np.minimum(r * distance, 700.0)), distance, p_a,
                                         dim)
    return distance, np.asarray(low, dtype=float), np.asarray(high, dtype=float)


@st.cache_data(max_entries=16, show_spinner=False)
def sample_witness(dim: int, sigma0: float, p_a: float, d: float, sigma1: float, r: float | None, n: int,
                   batch_size: int):
    """witness.verify in dimension ``dim`` (seed 0): the engine's counts at x0 and x1."""
    w = witness.build_witness(dim, sigma0, p_a, d, sigma1, r=r)
    return witness.verify(w, n=n, alpha=ALPHA, seed=0, batch_size=batch_size)


@st.cache_data(max_entries=8, show_spinner=False)
def search_stored(db: str, run_id: int, stamp: tuple):
    """The data search of a stored run (witness_data), cached until the run changes (``stamp``)."""
    from smoothviz import witness_data

    data = witness_data.load_run_data(get_store(), run_id)
    return witness_data.search_stored_run(data), data.dataset.input_shape


@st.cache_data(max_entries=8, show_spinner=False)
def verify_stored(db: str, run_id: int, stamp: tuple, n: int):
    """The search above with its most refuted points checked by sampling f* (witness_data.verify_search)."""
    from smoothviz import witness_data

    search, _ = search_stored(db, run_id, stamp)
    return witness_data.verify_search(search, n=n, alpha=ALPHA, limit=VERIFY_POINTS)


def verdict(w: witness.Witness) -> None:
    """The page's one-sentence answer."""
    if w.naive_radius <= 0:
        st.info("With p_A ≤ 1/2 nothing is certified at x₀, so there is nothing to refute.", icon=":material/info:")
    elif w.broken:
        st.error(f"The naive certificate claims robustness up to R = {w.naive_radius:.4f}; this classifier changes "
                 f"its answer at distance d = {w.distance:.4f} < R: P(A) at x₁ is {w.p_x1:.4f} < 1/2.",
                 icon=":material/gpp_bad:")
    elif w.distance >= w.naive_radius:
        st.info(f"x₁ lies at d = {w.distance:.4f}, outside the naive radius R = {w.naive_radius:.4f}: the naive "
                "certificate claims nothing there. Choose a smaller d.", icon=":material/info:")
    else:
        st.success(f"No counterexample at this pair: even the worst classifier keeps P(A) = {w.p_x1:.4f} ≥ 1/2 at "
                   f"d = {w.distance:.4f}. A larger σ₁/σ₀ change or distance, or *the worst for r*, finds one.",
                   icon=":material/verified:")


# ---------------------------------------------------------------- page
st.title("Counterexamples to the naive certificate")
st.markdown(
    "A certificate must hold for **every** base classifier that agrees with what was measured at x₀. "
    "The naive radius R = σ(x₀)·Φ⁻¹(p_A) ignores that the smoothed classifier uses σ(x₁) at a nearby x₁. "
    "Below, an explicit classifier f* has exactly probability p_A of class A at x₀ under N(x₀, σ₀²I), yet "
    "at x₁ (distance d < R) under N(x₁, σ₁²I) it votes A less than half the time (the Neyman–Pearson worst "
    "case; Sukenik, Kuvshinov & Günnemann, ICML 2022, Theorem 2). Its class-A region is a ball around "
    "c = (σ₀²x₁ − σ₁²x₀)/(σ₀² − σ₁²) when σ₁ > σ₀ and the outside of one when σ₁ < σ₀."
)

entering = entered_page()
if entering or "cx_mode" not in st.session_state:
    st.session_state.cx_mode = "data" if st.query_params.get("run") is not None else "formula"
mode = st.radio("Show", MODES, key="cx_mode", horizontal=True,
                format_func=lambda m: {"formula": "Formula: any dimension",
                                       "data": "Real data: the runs in the store"}[m])

if mode == "formula":
    if entering or "cx_preset" not in st.session_state:
        for key, limits in NUMBERS.items():
            st.session_state[f"cx_{key}"] = link_number(key, *limits, name=NAMES[key])
        dim_link = int(st.session_state.cx_dim)
        st.session_state.cx_preset = next((k for k, (_, n) in DIM_PRESETS.items() if n == dim_link), "custom") \
            if "dim" in st.query_params else DEFAULT_PRESET
        st.session_state.cx_choose = "worst" if "r" in st.query_params else "pair"
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Input dimension (preset)", list(DIM_PRESETS), key="cx_preset",
                          format_func=lambda k: DIM_PRESETS[k][0] + (f", N = {DIM_PRESETS[k][1]:,}" if DIM_PRESETS[k][1] else ""))
    # Typed numbers have no bounds in the widgets (a browser keeps an out-of-range entry without sending it);
    # the page checks them instead and refuses a value outside its range in one line.
    if preset == "custom":
        dim = c1.number_input(f"N (custom dimension, 1 to {MAX_DIM:,})", step=1, key="cx_dim")
    else:
        dim = int(DIM_PRESETS[preset][1])
        st.session_state.cx_dim = dim
    sigma0 = c2.number_input("σ₀ = σ(x₀) (pixel units)", step=0.01, format="%.4f", key="cx_sigma0",
                             help="in [0.01, 1]")
    p_a = c3.number_input("p_A (probability of class A at x₀)", step=0.001, format="%.6f", key="cx_pa",
                          help="in [0.5, 0.999999]")
    choose = st.radio("Choose x₁", CHOOSE, key="cx_choose", horizontal=True,
                      format_func=lambda c: {"pair": "by σ₁/σ₀ and the distance d",
                                             "worst": "the worst for a semi-elasticity r"}[c])
    d1, d2 = st.columns(2)
    if choose == "pair":
        ratio = d1.number_input("σ₁/σ₀ = σ(x₁)/σ(x₀)", step=0.01, format="%.4f", key="cx_ratio", help="in [0.5, 2]")
        r_typed = None
    else:
        ratio = None
        r_typed = d1.number_input("semi-elasticity r of σ (per unit L2 distance)", step=0.01, format="%.4f",
                                  key="cx_r", help=f"in [0, {R_MAX:g}]; σ₁ may be anywhere in [σ₀e^(−rd), σ₀e^(rd)]")
    d = d2.number_input("distance d = ‖x₁ − x₀‖ (pixel units)", step=0.01, format="%.4f", key="cx_d",
                        help="in [0, 10]")
    typed = [("dim", dim)] if preset == "custom" else []
    typed += [("sigma0", sigma0), ("pa", p_a), ("d", d)]
    typed += [("ratio", ratio)] if choose == "pair" else [("r", r_typed)]
    if any([refused_number(NAMES[k], v, *NUMBERS[k][1:]) for k, v in typed]):  # a list: every refused value says so
        st.stop()
    dim, sigma0, p_a, d = int(dim), float(sigma0), float(p_a), float(d)
    set_query(
        dim=None if preset == DEFAULT_PRESET else dim,
        **{k: None if v == NUMBERS[k][0] else repr(v) for k, v in (("sigma0", sigma0), ("pa", p_a), ("d", d))},
        ratio=None if choose != "pair" or float(ratio) == NUMBERS["ratio"][0] else repr(float(ratio)),
        r=None if choose != "worst" else repr(float(r_typed)),
        run=None,
    )
    if choose == "worst":
        r_used = float(r_typed)
        with stop_on_error():
            d_star, sigma1, _ = worst_in_band(p_a, sigma0, r_used, dim, d)
        naive = float(bounds.naive_radius(p_a, sigma0)) if p_a > 0.5 else 0.0
        sound = float(bounds.input_dependent_radius(p_a, sigma0, r_used, dim)) if p_a > 0.5 else 0.0
        st.caption(f"For r = {r_used:g} the most damaging σ₁ at d = {d:.4f} is the band end σ₁ = {sigma1:.6f} "
                   f"(σ₁/σ₀ = {sigma1 / sigma0:.6f}). The smallest distance at which any admissible σ₁ breaks the "
                   f"naive certificate is {d_star:.4f}"
                   + (" (none: r = 0 or p_A at the ends)" if not math.isfinite(d_star) else
                      ", the sound radius: inside it nothing breaks.")
                   + (f" Try d between {d_star:.4f} and the naive radius {naive:.4f}."
                      if math.isfinite(d_star) and not d_star < d < naive else ""))
    else:
        r_used = None
        sigma1 = sigma0 * float(ratio)
    with stop_on_error():
        w = witness.build_witness(dim, sigma0, p_a, d, sigma1, r=r_used)

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Naive radius σ₀Φ⁻¹(p_A)", f"{w.naive_radius:.4f}", help="Not a guarantee when σ depends on x.")
    m2.metric("P(A) at x₁ under f*", f"{w.p_x1:.4f}", help="The Neyman–Pearson worst case: no base classifier "
              "with probability p_A at x₀ does worse at x₁.")
    m3.metric(f"Sound radius for r = {w.r:.4g}", f"{w.sound_radius:.4f}",
              help="r given, or the smallest r that allows σ₁ at distance d: |ln(σ₁/σ₀)|/d." if r_used is None
              else "The certificate that accounts for σ changing (Sukenik et al. 2022).")
    m4.metric("σ₁ = σ(x₁)", f"{w.sigma1:.6f}", delta=f"{w.sigma1 / w.sigma0 - 1:+.2%} vs σ₀", delta_color="off")
    verdict(w)

    left, right = st.columns([3, 2])
    with left:
        zoom = st.toggle("Zoom on the top of the shells", key="cx_zoom",
                         help="The full slice is to scale; the zoom shows where the noise mass meets f*'s boundary.")
        st.plotly_chart(plots_witness.slice_figure(w, zoom=zoom), key="cx_slice")
        g = plots_witness.slice_geometry(w)
        st.caption(
            f"Pixel units, to scale. In N = {dim:,} dimensions the noise sits on shells of radius σ√N "
            f"({g.shell0:.3f} around x₀, {g.shell1:.3f} around x₁), {g.distance:.3f} apart; its component along "
            "x₁ − x₀ is only about σ, so almost all of it lies near the top and bottom of each circle (thick arcs). "
            "Blue: f* says A; red: B."
        )
    with right:
        big = dim > SAMPLED_DIM
        n_choice = SUBSAMPLED_N if big else st.select_slider("noisy samples n", N_CHOICES, value=2000, key="cx_n")
        if big:
            st.caption(f"N = {dim:,}: sampling draws n = {SUBSAMPLED_N} noisy copies per point only (each holds "
                       f"{dim:,} values), so its intervals are wide.")
        plan = witness.plan_verification(w, n=n_choice, alpha=ALPHA)
        key = (dim, sigma0, p_a, d, w.sigma1, w.r, n_choice)
        if st.button(f"Sample f* in dimension {dim:,}", key="cx_sample", icon=":material/casino:"):
            with st.spinner(f"Sampling {n_choice:,} noisy copies at x₀ (CERTIFY) and at x₁…", show_time=True), \
                    stop_on_error():
                st.session_state.cx_sampled = (key, sample_witness(
                    dim, sigma0, p_a, d, w.sigma1, w.r, n_choice, 64 if big else 2048))
        sampled = st.session_state.get("cx_sampled")
        v = sampled[1] if sampled is not None and sampled[0] == key else None
        points = None if v is None else {"x0": (v.counts_x0[0], v.n, *v.interval_x0),
                                         "x1": (v.counts_x1[0], v.n, *v.interval_x1)}
        st.plotly_chart(plots_witness.probability_figure(w.p_x0, w.p_x1, points), key="cx_probability")
        if v is None:
            st.caption(f"Sampling with n = {n_choice:,} at α = {ALPHA:g} "
                       + ("should confirm the verdict." if plan.decisive else
                          "cannot be decisive here (the intervals would straddle 1/2 or the issued radius fall "
                          "short of d); a larger n or a clearer pair helps."))
        else:
            lo0, hi0 = v.interval_x0
            lo1, hi1 = v.interval_x1
            st.markdown(
                f"At x₀: {v.counts_x0[0]:,} of {v.n:,} votes for A, interval [{lo0:.4f}, {hi0:.4f}] (formula "
                f"{w.p_x0:.4f}); CERTIFY issues the naive radius {v.naive_radius_issued:.4f}.  \n"
                f"At x₁: {v.counts_x1[0]:,} of {v.n:,}, interval [{lo1:.4f}, {hi1:.4f}] (formula {w.p_x1:.4f}).  \n"
                f"Two-sided Clopper–Pearson intervals at level {1 - ALPHA:g}; {v.seconds:.1f} s."
            )
            if v.confirmed:
                st.success("Sampling confirms it: the issued naive certificate covers x₁, and P(A) at x₁ is below "
                           "1/2 at level α.", icon=":material/check_circle:")
            else:
                st.warning("These samples do not confirm the counterexample at level α "
                           + ("(the issued radius falls short of d)." if not v.issued_covers_x1 else
                              "(P(A) at x₁ is not shown below 1/2)."), icon=WARNING_ICON)
    r_curve = w.r if math.isfinite(w.r) else None
    if r_curve is not None and w.naive_radius > 0:
        distance, low, high = band_curves(p_a, sigma0, r_curve, dim, round(1.2 * max(w.naive_radius, d), 6))
        st.plotly_chart(plots_witness.breaking_figure(distance, low, high, w.naive_radius, w.sound_radius, d),
                        key="cx_band")
        st.caption(f"For a σ with semi-elasticity r = {r_curve:.4g}, σ₁ may lie anywhere between the two curves' "
                   "σ₁ values; the certificate is lost where the lower curve falls below 1/2 — the sound radius. "
                   "Beyond it, up to the naive radius, some admissible σ₁ breaks the naive claim.")
    st.stop()

# ---------------------------------------------------------------- real data
store = get_store()
with stop_on_error():
    runs = store.runs()
if runs.empty:
    st.info("The store has no runs yet. Load the shipped example runs (digits and Fashion-MNIST with a kNN σ) or "
            "certify some on the Certify page.")
    offer_examples("cx_examples")
    st.stop()
rows = {int(r["id"]): r for r in runs.to_dict("records")}


def input_dependent(row: dict) -> bool:
    spec = str(row.get("sigma_spec") or "")
    return row["done"] > 0 and spec.startswith(("knn", "ddrs"))


choices = [i for i, row in rows.items() if input_dependent(row)]
if not choices:
    st.info("No run in the store uses an input-dependent σ (kNN or ddrs) with results: for a constant σ the naive "
            "certificate is Cohen's and sound. Load the example runs or certify with a kNN σ.")
    offer_examples("cx_examples_none")
    st.stop()
if entering or st.session_state.get("cx_run") not in choices:
    wanted = link_run() if entering else None
    if wanted is not None and wanted not in choices:
        why = "is not in the store" if wanted not in rows else "has no input-dependent σ with results"
        link_note(f"The link's run #{wanted} {why}; showing {run_label(rows[choices[0]])}.")
    st.session_state.cx_run = wanted if wanted in choices else choices[0]
run_id = st.selectbox("Run", choices, key="cx_run",
                      format_func=lambda i: f"{run_label(rows[i])} · {rows[i]['dataset']} · {rows[i]['sigma_spec']}")
set_query(run=run_id, dim=None, sigma0=None, pa=None, ratio=None, d=None, r=None)
row = rows[run_id]
naive_only = str(row.get("sigma_spec") or "").startswith("ddrs")
if naive_only:
    st.caption("This run's σ is data-dependent (ddrs): naive only (no guarantee); its sound radius is 0. Each σ(x₁) "
               "costs n·G forward passes of the model, so a few candidates on at most 40 points are searched.")
st.caption(
    "For every certified point whose naive radius exceeds its sound radius, the search tries real inputs x₁ "
    "within the naive radius — other test points, points on the segments toward the nearest training images, "
    "and steps along ±∇ln σ — with their actual σ(x₁), and keeps the pairs where the worst-case classifier "
    "f* (probability p_A of A at x₀, as the run measured) votes A at x₁ less than half the time."
)
stamp = (int(row["done"]), str(row["status"]), str(row["updated"]))
searched_key = ("searched", run_id, stamp)
if st.session_state.get("cx_searched") != searched_key:
    if st.button("Search this run for counterexamples", key="cx_search", type="primary", icon=":material/search:"):
        st.session_state.cx_searched = searched_key
        st.rerun()
    st.stop()
with st.spinner("Searching pairs of real inputs…", show_time=True), stop_on_error():
    search, input_shape = search_stored(str(store.path), run_id, stamp)
verified_n = st.session_state.get("cx_verified")
if verified_n is not None and verified_n[0] == (run_id, stamp):
    with st.spinner(f"Sampling f* for up to {VERIFY_POINTS} refuted points…", show_time=True), stop_on_error():
        search = verify_stored(str(store.path), run_id, stamp, verified_n[1])

m = st.columns(5)
m[0].metric("points in the run", f"{search.points:,}")
m[1].metric("certified", f"{search.examined:,}")
m[2].metric("naive > sound", f"{len(search.exceeding):,}")
m[3].metric("refuted by a data pair", f"{search.refuted:,}",
            help=f"of {len(search.searched):,} searched" if len(search.searched) != len(search.exceeding) else None)
m[4].metric("verified by sampling", "—" if search.verified is None else f"{search.verified:,}",
            help=f"the {VERIFY_POINTS} most refuted points are sampled" if search.verified is not None else
            "press Verify below")
for text in search.notes:
    st.caption(text)
if not search.refuted:
    st.success("No pair of real inputs found refutes a naive certificate of this run"
               + (" (its σ is constant near every point)." if not search.exceeding else "."),
               icon=":material/verified:")
    st.stop()
if st.button(f"Verify the {VERIFY_POINTS} most refuted points by sampling (n = 10,000)", key="cx_verify",
             icon=":material/casino:"):
    st.session_state.cx_verified = ((run_id, stamp), 10_000)
    st.rerun()

best = search.best()
table = pd.DataFrame([{
    "idx": w.idx, "found by": w.source, "d": w.distance, "σ(x₀)": w.sigma0, "σ(x₁)": w.sigma1,
    "σ₁/σ₀": w.sigma1 / w.sigma0, "p_A": w.p_a, "naive radius": w.naive_radius, "sound radius": w.sound_radius,
    "P(A) at x₁ under f*": w.worst,
    "verified by sampling": "—" if search.verify_n is None else "not sampled" if w.verification is None
    else "yes" if w.verification.confirmed else "no",
} for w in best])
st.dataframe(table, hide_index=True, key="cx_table", column_config={
    c: st.column_config.NumberColumn(format="%.4f") for c in table.columns
    if c not in ("idx", "found by", "verified by sampling")})
pick = st.selectbox("Refuted point", [w.idx for w in best], key="cx_point",
                    format_func=lambda i: f"#{i}")
chosen = next(w for w in best if w.idx == pick)
shape = tuple(int(v) for v in input_shape)
left, right = st.columns([2, 3])
with left:
    st.plotly_chart(plots_witness.pair_figure(chosen.x0.reshape(shape).numpy(), chosen.x1.reshape(shape).numpy(),
                                              chosen.sigma0, chosen.sigma1, chosen.distance), key="cx_pair")
    st.markdown(
        f"Test point **#{chosen.idx}** is certified naively up to R = {chosen.naive_radius:.4f} (sound: "
        f"{chosen.sound_radius:.4f}). x₁, found by **{chosen.source}**, is {chosen.distance:.4f} away with "
        f"σ(x₁) = {chosen.sigma1:.4f}: the worst-case classifier votes A there with probability {chosen.worst:.4f}."
    )
    st.page_link(PAGES["counterexamples"], label="Open this pair in the formula view", icon=":material/functions:",
                 query_params={"dim": str(search.dim), "sigma0": repr(chosen.sigma0), "pa": repr(chosen.p_a),
                               "ratio": repr(min(max(chosen.sigma1 / chosen.sigma0, 0.5), 2.0)),
                               "d": repr(chosen.distance)})
    if not naive_only:  # the explorer builds kNN and constant sigmas (a ddrs sigma needs the run's model)
        st.page_link(PAGES["explorer"], label="This point in the Sample explorer", icon=":material/image_search:",
                     query_params={"dataset": str(row["dataset"]), "idx": str(chosen.idx),
                                   "sigma": str(row["sigma_spec"]),
                                   **({"ckpt": str(row["checkpoint"])} if row.get("checkpoint") else {})})
with right:
    st.plotly_chart(plots_witness.slice_figure(chosen.witness(), zoom=True), key="cx_pair_slice")
    v = chosen.verification
    if v is not None:
        st.caption(f"Sampled with n = {v.n:,} (f* with p = {chosen.p_verify:.6f} of A at x₀, so that CERTIFY's "
                   f"issued naive radius {v.naive_radius_issued:.4f} covers d): {v.counts_x1[0]:,} votes for A at x₁, "
                   f"upper bound {v.p_a_upper_x1:.4f} — " + ("confirmed." if v.confirmed else "not confirmed."))
