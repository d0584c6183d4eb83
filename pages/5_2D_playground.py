"""2-D playground: base vs smoothed decision regions, sigma(x), certified circles, constant vs kNN sigma."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._ui import (
    ERROR_ICON,
    checkpoint_label,
    db_path,
    display_path,
    entered_page,
    list_checkpoints,
    load_dataset,
    load_model,
    load_sigma,
    set_query,
    setup_page,
    shown,
    stop_on_error,
)
from pages._ui.numbers import link_note, link_number
from smoothviz import plots, plots_explore
from smoothviz.sigma import R_MAX, SIGMA_MAX, SIGMA_MIN

setup_page("2-D playground", ":material/scatter_plot:")
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


# (URL key, default, smallest, largest) of each number the sidebar holds. The widgets have no bounds
# (a browser keeps an out-of-range entry on screen without sending it, so the page would silently
# keep the previous value); the page checks them and refuses a value outside with a message.
NUMBERS = {
    "pg_train_sigma": ("train_sigma", "training σ", 0.1, max(0.01, SIGMA_MIN), min(1.0, SIGMA_MAX)),
    "pg_sigma": ("sigma", "σ", 0.1, max(0.01, SIGMA_MIN), min(1.0, SIGMA_MAX)),
    "pg_r": ("r", "r", 4.0, 0.0, min(50.0, R_MAX)),
    "pg_k": ("k", "k", 10, 1, 200),
}
CERTIFY_NUMBERS = {"pg_n0": ("n0", 100, 10, 1000), "pg_alpha": ("α", 0.001, 1e-6, 0.5),
                   "pg_seed": ("seed", 0, 0, 2**31 - 1)}


def url_choice(key: str, default, choices: tuple, text: str):
    """A URL value that must be one of ``choices`` (compared as text); anything else → ``default`` with a note."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    by_text = {str(c): c for c in choices}
    if raw not in by_text:
        link_note(f"The link's {key}={shown(raw)} is not {text}; using {default}.")
        return default
    return by_text[raw]


def url_points() -> list[int]:
    """The test points of the URL's ``pts`` (comma-separated indices), with a note for items that are not."""
    raw = st.query_params.get("pts")
    if raw is None:
        return [0, 1, 2]
    items = [t.strip() for t in str(raw).split(",") if t.strip()]
    good = [int(t) for t in items if t.isdigit() and len(t) <= 9]
    bad = [t for t in items if not (t.isdigit() and len(t) <= 9)]
    if bad:
        link_note(f"The link's pts has {plots.plural(len(bad), 'item')} that are not test indices: "
                  f"{', '.join(shown(t) for t in bad[:5])}.")
    if len(good) > MAX_POINTS:
        link_note(f"The link names {len(good)} test points; the playground certifies at most {MAX_POINTS}.")
    return list(dict.fromkeys(good))[:MAX_POINTS]


# ---------------------------------------------------------------- state from the link (whenever the page is entered)
entering = entered_page()
if entering or "pg_dataset" not in st.session_state:
    st.session_state.pg_dataset = url_choice("dataset", TOY[0], TOY, "a 2-D toy dataset")
model_from_link = entering or "pg_model" not in st.session_state
if model_from_link:
    st.session_state.pg_model = st.query_params.get("model", FLY_TOKEN)
for state_key, (url_key, _, default, lo, hi) in NUMBERS.items():
    if entering or state_key not in st.session_state:
        st.session_state[state_key] = link_number(url_key, default, lo, hi)
if entering or "pg_res" not in st.session_state:
    res_url = link_number("res", 60, 20, 120)
    st.session_state.pg_res = int(round(res_url, -1))
    if st.session_state.pg_res != res_url:
        link_note(f"The grid resolution moves in steps of 10: {res_url} is shown as {st.session_state.pg_res}.")
if entering or "pg_n" not in st.session_state:
    st.session_state.pg_n = url_choice("n", 300, N_GRID, f"one of {', '.join(map(str, N_GRID))}")
if entering or "pg_points" not in st.session_state:
    st.session_state.pg_points = url_points()


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
    wanted = st.session_state.pg_model
    st.session_state.pg_model = by_label.get(wanted, ON_THE_FLY)
    if wanted != FLY_TOKEN and wanted not in by_label:
        what = f"The link's model={shown(str(wanted))}" if model_from_link else f"{display_path(Path(wanted))}"
        link_note(f"{what} is not one of the checkpoints for {dataset_name}; training a small MLP on the fly instead.")

with st.sidebar:
    with st.form("pg_form"):
        source = st.selectbox(
            "Base classifier",
            sources,
            key="pg_model",
            format_func=lambda p: p if p == ON_THE_FLY else checkpoint_label(display_path(Path(p)), metas[p]),
        )
        train_sigma = st.number_input(
            "Training noise σ (on-the-fly MLP)", step=0.01, key="pg_train_sigma",
            help="The on-the-fly MLP is trained with Gaussian noise of this constant σ (ignored for checkpoints).",
        )
        st.markdown("**Smoothing**")
        sigma0 = st.number_input(
            "σ (constant) = σ_b (kNN base)", step=0.01, key="pg_sigma",
            help="Left: constant σ. Right: σ(x) = σ_b·exp(r·(d_k(x) − m)), m = mean d_k over the training set.",
        )
        r = st.number_input("Semi-elasticity r", step=0.5, key="pg_r")
        k = st.number_input("k nearest neighbours", step=1, key="pg_k")
        st.markdown("**Monte Carlo on the grid**")
        res = st.slider("Grid resolution (per axis)", 20, 120, step=10, key="pg_res")
        n_grid = st.select_slider("n samples per grid point", options=N_GRID, key="pg_n")
        st.form_submit_button("Update", type="primary", width="stretch", icon=":material/refresh:")
    with st.expander("Certification settings"):
        n_cert = st.select_slider("n (certify)", options=(1000, 10_000, 100_000), value=10_000)
        n0_cert = st.number_input("n0 (selection)", value=100, step=10, key="pg_n0")
        alpha = st.number_input("α", value=0.001, step=0.001, format="%.4f", key="pg_alpha")
        seed = st.number_input("Seed", value=0, step=1, key="pg_seed")

# a number outside its range is refused in one line naming it, and nothing is computed or written
values = {"pg_train_sigma": train_sigma, "pg_sigma": sigma0, "pg_r": r, "pg_k": k, "pg_n0": n0_cert,
          "pg_alpha": alpha, "pg_seed": seed}
ranges = {**{name: (label, lo, hi) for name, (_, label, _, lo, hi) in NUMBERS.items()},
          **{name: (label, lo, hi) for name, (label, _, lo, hi) in CERTIFY_NUMBERS.items()}}
refusals = [f"{label} = {'(empty)' if values[name] is None else format(values[name], 'g')} is outside "
            f"[{lo:g}, {hi:g}]." for name, (label, lo, hi) in ranges.items()
            if values[name] is None or not (math.isfinite(values[name]) and lo <= values[name] <= hi)]
for refusal in refusals:
    st.error(refusal, icon=ERROR_ICON)
if refusals:
    st.stop()

num_test = len(ds.test_y)
outside = [i for i in st.session_state.pg_points if not 0 <= i < num_test]
if outside:
    link_note(f"{dataset_name} has {plots.plural(num_test, 'test point')}: left out "
              f"{', '.join(f'#{i}' for i in outside[:5])}{' and more' if len(outside) > 5 else ''}.")
    st.session_state.pg_points = [i for i in st.session_state.pg_points if 0 <= i < num_test]


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
        points=ds.train_x.numpy(), log_scale=True,
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
    st.info("Choose test points above (or select them on a map) to see their certified circles.",
            icon=":material/info:")
