"""2-D playground: base vs smoothed decision regions, sigma(x), certified circles, constant vs kNN sigma."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._ui import (
    checkpoint_label,
    db_path,
    display_path,
    list_checkpoints,
    load_dataset,
    load_model,
    load_sigma,
    query_ints,
    set_query,
    setup_page,
    stop_on_error,
)
from smoothviz import plots_explore

setup_page("2-D playground", "🧭")
st.title("2-D playground")
st.caption(
    "Randomized smoothing where you can see it: a small classifier on a 2-D toy set, the smoothed "
    "classifier g(x) = argmax_c P(f(x + ε) = c) estimated by Monte Carlo on a grid, and certified L2 "
    "circles around chosen test points — with a constant σ and with an input-dependent kNN σ(x) side by side."
)

TOY = ("toy2d-moons", "toy2d-circles", "toy2d-blobs")
ON_THE_FLY = "train on the fly"
FLY_TOKEN = "fly"  # how the URL says ON_THE_FLY
MAX_POINTS = 8
N_GRID = (100, 200, 300, 500)
NAIVE_COLUMN = "naive radius (not a guarantee)"


def _q_float(key: str, default: float, lo: float, hi: float) -> float:
    """A float from the URL, clamped to the widget's range (``default`` when malformed)."""
    try:
        value = float(st.query_params.get(key, default))
    except (TypeError, ValueError):
        return default
    return min(max(value, lo), hi) if math.isfinite(value) else default


def _q_int(key: str, default: int, lo: int, hi: int) -> int:
    """An integer from the URL, clamped to the widget's range (``default`` when malformed)."""
    try:
        return min(max(int(st.query_params.get(key, default)), lo), hi)
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------- state from the URL (first run only)
_DEFAULTS = {
    "pg_dataset": (st.query_params.get("dataset") if st.query_params.get("dataset") in TOY else TOY[0]),
    "pg_model": st.query_params.get("model", FLY_TOKEN),
    "pg_train_sigma": _q_float("train_sigma", 0.1, 0.01, 1.0),
    "pg_sigma": _q_float("sigma", 0.1, 0.01, 1.0),
    "pg_r": _q_float("r", 4.0, 0.0, 50.0),
    "pg_k": _q_int("k", 10, 1, 200),
    "pg_res": _q_int("res", 60, 20, 120),
    "pg_n": _q_int("n", 300, 1, 10**6),
    "pg_points": query_ints("pts")[:MAX_POINTS] if "pts" in st.query_params else [0, 1, 2],
}
for key, value in _DEFAULTS.items():
    st.session_state.setdefault(key, value)
if st.session_state.pg_n not in N_GRID:
    st.session_state.pg_n = 300
st.session_state.pg_res = int(round(st.session_state.pg_res, -1))


@st.cache_resource(max_entries=6, show_spinner="Training a small MLP on the fly (a few seconds)…")
def toy_model(dataset: str, train_spec: str, seed: int):
    """A small MLP trained with noise ``train_spec``, cached per dataset/sigma/seed (file kept next to the store)."""
    from smoothviz.playground import fit_toy_model

    return fit_toy_model(load_dataset(dataset), train_spec, db_path().parent / "playground", seed=seed)


def get_model(dataset: str, source: str, train_spec: str, seed: int):
    """(model, meta) for the chosen source: a checkpoint path or the on-the-fly MLP."""
    if source == ON_THE_FLY:
        return toy_model(dataset, train_spec, seed)
    return load_model(source, dataset=dataset)


@st.cache_data(max_entries=16, show_spinner="Monte Carlo on the grid…")
def maps(dataset: str, source: str, mtime: float, train_spec: str, seed: int, spec: str, res: int, n: int,
         alpha: float):
    """Grid axes, base regions, sigma(x) and the smoothed classifier's map, cached by identifiers."""
    from smoothviz import playground

    model, _ = get_model(dataset, source, train_spec, seed)
    ds = load_dataset(dataset)
    grid = playground.make_grid(ds, resolution=res)
    sig = load_sigma(dataset, spec)
    return {
        "xs": grid.xs,
        "ys": grid.ys,
        "base": playground.base_regions(model, grid),
        "sigma": playground.sigma_map(sig, grid),
        "smooth": playground.smoothed_regions(model, grid, sig, ds.num_classes, n=n, alpha=alpha, seed=seed),
    }


@st.cache_data(max_entries=64, show_spinner="Certifying the selected points…")
def certified(dataset: str, source: str, mtime: float, train_spec: str, seed: int, spec: str, points: tuple[int, ...],
              n0: int, n: int, alpha: float):
    """CERTIFY results for the selected test points under sigma function ``spec``."""
    from smoothviz import playground

    model, _ = get_model(dataset, source, train_spec, seed)
    return playground.certify_selected(
        model, load_dataset(dataset), list(points), load_sigma(dataset, spec), n0=n0, n=n, alpha=alpha, seed=seed
    )


# ---------------------------------------------------------------- controls
with st.sidebar:
    st.header("Playground")
    dataset_name = st.selectbox("Dataset", TOY, key="pg_dataset")
with stop_on_error():
    ds = load_dataset(dataset_name)

ckpts = list_checkpoints(dataset_name)
sources = [ON_THE_FLY] + [p for p, _ in ckpts]
metas = dict(ckpts)
by_label = {display_path(Path(p)): p for p in sources[1:]}
if st.session_state.pg_model not in sources:
    st.session_state.pg_model = by_label.get(st.session_state.pg_model, ON_THE_FLY)

with st.sidebar:
    with st.form("pg_form"):
        source = st.selectbox(
            "Base classifier",
            sources,
            key="pg_model",
            format_func=lambda p: p if p == ON_THE_FLY else checkpoint_label(display_path(Path(p)), metas[p]),
        )
        train_sigma = st.number_input(
            "Training noise σ (on-the-fly MLP)", min_value=0.01, max_value=1.0, step=0.01, key="pg_train_sigma",
            help="The on-the-fly MLP is trained with Gaussian noise of this constant σ (ignored for checkpoints).",
        )
        st.markdown("**Smoothing**")
        sigma0 = st.number_input(
            "σ (constant) = σ_b (kNN base)", min_value=0.01, max_value=1.0, step=0.01, key="pg_sigma",
            help="Left: constant σ. Right: σ(x) = σ_b·exp(r·(d_k(x) − m)), m = mean d_k over the training set.",
        )
        r = st.number_input("Semi-elasticity r", min_value=0.0, max_value=50.0, step=0.5, key="pg_r")
        k = st.number_input("k nearest neighbours", min_value=1, max_value=200, step=1, key="pg_k")
        st.markdown("**Monte Carlo on the grid**")
        res = st.slider("Grid resolution (per axis)", 20, 120, step=10, key="pg_res")
        n_grid = st.select_slider("n samples per grid point", options=N_GRID, key="pg_n")
        st.form_submit_button("Update", type="primary", width="stretch")
    with st.expander("Certification settings"):
        n_cert = st.select_slider("n (certify)", options=(1000, 10_000, 100_000), value=10_000)
        n0_cert = st.number_input("n0 (selection)", min_value=10, max_value=1000, value=100, step=10)
        alpha = st.number_input("α", min_value=1e-6, max_value=0.5, value=0.001, format="%.4f")
        seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1)

num_test = len(ds.test_y)
st.session_state.pg_points = [i for i in st.session_state.pg_points if 0 <= i < num_test][:MAX_POINTS]


def _on_select(key: str) -> None:
    """A box/lasso/click selection on a map replaces the chosen points (test indices from customdata)."""
    from smoothviz.playground import indices_from_selection

    state = st.session_state.get(key)
    points = list(state.selection.points) if state is not None else []
    chosen = indices_from_selection(points, limit=MAX_POINTS)
    if chosen:
        st.session_state.pg_points = chosen


def selectable_chart(fig, key: str) -> None:
    """A map whose test points can be picked: dragging draws a selection box (not a pan)."""
    fig.update_layout(dragmode="select")
    st.plotly_chart(fig, key=key, on_select=lambda: _on_select(key), selection_mode=("points", "box", "lasso"))


points = st.multiselect(
    f"Test points to certify (up to {MAX_POINTS}; or select points on the maps with box/lasso)",
    list(range(num_test)),
    key="pg_points",
    max_selections=MAX_POINTS,
    format_func=lambda i: f"#{i} ({plots_explore.class_label(ds.class_names[int(ds.test_y[i])])})",
)

const_spec = f"constant:{sigma0:g}"
knn_spec = f"knn:{sigma0:g},{r:g},{int(k)}"
train_spec = f"constant:{train_sigma:g}"
source_label = source if source == ON_THE_FLY else display_path(Path(source))
set_query(
    dataset=dataset_name, model=FLY_TOKEN if source == ON_THE_FLY else source_label,
    train_sigma=f"{train_sigma:g}", sigma=f"{sigma0:g}", r=f"{r:g}",
    k=int(k), res=int(res), n=int(n_grid), pts=",".join(map(str, points)) if points else None,
)

mtime = Path(source).stat().st_mtime if source != ON_THE_FLY else 0.0
common = (dataset_name, source, mtime, train_spec, int(seed))
with stop_on_error():
    model, meta = get_model(dataset_name, source, train_spec, int(seed))
    m_const = maps(*common, const_spec, int(res), int(n_grid), float(alpha))
    m_knn = maps(*common, knn_spec, int(res), int(n_grid), float(alpha))
    c_const = certified(*common, const_spec, tuple(points), int(n0_cert), int(n_cert), float(alpha))
    c_knn = certified(*common, knn_spec, tuple(points), int(n0_cert), int(n_cert), float(alpha))


def _acc(key: str) -> str:
    value = meta.get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


st.caption(
    f"Base classifier: {'MLP trained just now with ' + train_spec if source == ON_THE_FLY else source_label} · "
    f"clean test accuracy {_acc('clean_accuracy')}, accuracy under its training noise {_acc('noisy_accuracy')}."
)

names = ds.class_names
test_xy = ds.test_x.numpy()
test_y = ds.test_y.numpy()
ids = list(range(num_test))

# ---------------------------------------------------------------- row 1: base regions and sigma(x)
c1, c2 = st.columns(2)
with c1:
    fig = plots_explore.region_map(
        m_const["xs"], m_const["ys"], m_const["base"], names, "Base classifier f: decision regions",
        points=test_xy, point_labels=test_y, point_ids=ids,
    )
    selectable_chart(fig, "pg_sel_base")
with c2:
    fig = plots_explore.scalar_heatmap(
        m_knn["xs"], m_knn["ys"], m_knn["sigma"], f"kNN σ(x) (σ_b = {sigma0:g}, r = {r:g}, k = {int(k)})", "σ(x)",
        points=ds.train_x.numpy(),
    )
    st.plotly_chart(fig, key="pg_sigma_map")

# ---------------------------------------------------------------- row 2: smoothed, constant vs kNN
st.subheader("Smoothed classifier g and certified circles")
st.caption(
    f"Monte Carlo with n = {n_grid} noisy samples per grid point (all {int(res) ** 2:,} points in one batch); grey = "
    f"abstain (Clopper-Pearson bound on p_A at α = {alpha:g} not above 1/2). Circles: CERTIFY with n = {n_cert:,}; "
    "**solid = sound radius** (a guarantee), **dashed = naive radius σ(x)·Φ⁻¹(p_A)** (not a guarantee)."
)
c3, c4 = st.columns(2)
for col, m, cert, title, key, naive in (
    (c3, m_const, c_const, f"Constant σ = {sigma0:g}", "pg_sel_const", False),
    (c4, m_knn, c_knn, f"Input-dependent σ(x), r = {r:g}", "pg_sel_knn", True),
):
    with col:
        circles = []
        for p in cert:
            c = p.circle()
            if not naive:
                c.pop("naive_radius")
            circles.append(c)
        fig = plots_explore.region_map(
            m["xs"], m["ys"], m["smooth"].pred, names, title,
            points=test_xy, point_labels=test_y, point_ids=ids, circles=circles,
            hover_values=m["smooth"].p_a_lower, hover_name="p_A lower bound",
        )
        selectable_chart(fig, key)

rows = []
for kind, cert in (("constant", c_const), ("kNN σ(x)", c_knn)):
    for p in cert:
        rows.append({
            "σ function": kind, "test #": p.idx, "label": names[p.label],
            "prediction": "abstain" if p.predict < 0 else names[p.predict],
            "σ(x)": p.sigma, "p_A lower": p.p_a_lower, "sound radius": p.radius, NAIVE_COLUMN: p.naive_radius,
        })
if rows:
    st.dataframe(
        pd.DataFrame(rows), hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.4f")
            for c in ("σ(x)", "p_A lower", "sound radius", NAIVE_COLUMN)
        },
    )
else:
    st.info("Choose test points above (or select them on a map) to see their certified circles.", icon="ℹ️")
