"""Sample explorer: one test point under randomized smoothing with sigma(x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from pages._ui import (
    checkpoint_label,
    display_path,
    list_checkpoints,
    load_dataset,
    load_model,
    load_sigma,
    query_int,
    set_query,
    setup_page,
    stop_on_error,
)
from smoothviz import plots, plots_explore
from smoothviz.data import DATASET_INFO, DEFAULT_DATASET

setup_page("Sample explorer", "🔍")
st.title("Sample explorer")
st.caption(
    "One test point x under Gaussian smoothing with σ(x): the noisy copies the base classifier votes "
    "on, the Monte Carlo lower bound on p_A, and the certified L2 radius. For a kNN σ(x) the sound "
    "radius follows Sukenik et al. (2022); the naive radius σ(x)·Φ⁻¹(p_A) is shown only for comparison."
)

IMAGE_DATASETS = [name for name, info in DATASET_INFO.items() if len(info.input_shape) > 1]
N_CHOICES = (1000, 2000, 5000, 10000)


@st.cache_data(max_entries=8, show_spinner="σ(x) over the test set…")
def test_sigmas(dataset: str, spec: str):
    """sigma(x) on a fixed subset of test points, to place one point's sigma among the others."""
    from smoothviz.explorer import sample_test_sigmas

    return sample_test_sigmas(load_sigma(dataset, spec), load_dataset(dataset))


@st.cache_data(max_entries=64, show_spinner="Sampling noisy copies and certifying…")
def explore(dataset: str, ckpt: str, mtime: float, spec: str, idx: int, n0: int, n: int, alpha: float, seed: int):
    """The explorer's data for one point, cached by identifiers (``mtime`` invalidates a retrained checkpoint)."""
    from smoothviz.explorer import explore_point

    model, _ = load_model(ckpt, dataset=dataset)
    return explore_point(
        model, load_dataset(dataset), idx, load_sigma(dataset, spec), n0=n0, n=n, alpha=alpha, seed=seed
    )


# ---------------------------------------------------------------- dataset
q_dataset = st.query_params.get("dataset", DEFAULT_DATASET)
if q_dataset in DATASET_INFO and q_dataset not in IMAGE_DATASETS:
    st.info(f"**{q_dataset}** has 2-D inputs: explore it in the 2-D playground instead.", icon="ℹ️")
    st.page_link("pages/5_2D_playground.py", label="Open the 2-D playground", icon="🧭")
    q_dataset = DEFAULT_DATASET
if "ex_dataset" not in st.session_state:
    st.session_state.ex_dataset = q_dataset if q_dataset in IMAGE_DATASETS else DEFAULT_DATASET

with st.sidebar:
    st.header("Point")
    dataset_name = st.selectbox(
        "Dataset",
        IMAGE_DATASETS,
        key="ex_dataset",
        format_func=lambda d: f"{d} — {DATASET_INFO[d].description}",
    )

with stop_on_error():
    ds = load_dataset(dataset_name)

# ---------------------------------------------------------------- checkpoint
ckpts = list_checkpoints(dataset_name)
if not ckpts:
    set_query(dataset=dataset_name)
    st.warning(
        f"No checkpoint trained on **{dataset_name}** in assets/ or runs/checkpoints/. "
        "Train one on the Train page, then come back.",
        icon="⚠️",
    )
    st.page_link("pages/6_Train.py", label="Go to the Train page", icon="🏋️")
    st.stop()
paths = [p for p, _ in ckpts]
metas = dict(ckpts)
labels = {p: display_path(Path(p)) for p in paths}


def _on_checkpoint_change() -> None:
    """A new checkpoint brings its own training sigma as the default sigma function."""
    st.session_state.ex_sigma = str(metas[st.session_state.ex_ckpt].get("sigma") or "constant:0.25")


def _random_index(size: int) -> None:
    """Jump to a random test point (a callback: it runs before the index widget is drawn)."""
    st.session_state.ex_idx = int(np.random.default_rng().integers(size))


# The URL seeds the first run of a session (a shared link); later the widgets lead.
first_visit = "ex_seen" not in st.session_state
st.session_state.ex_seen = True
if st.session_state.get("ex_ckpt") not in paths:
    by_label = {v: k for k, v in labels.items()}
    st.session_state.ex_ckpt = by_label.get(st.query_params.get("ckpt") if first_visit else None, paths[0])
    st.session_state.ex_sigma = str(
        (st.query_params.get("sigma") if first_visit else None)
        or metas[st.session_state.ex_ckpt].get("sigma")
        or "constant:0.25"
    )
if "ex_idx" not in st.session_state:
    st.session_state.ex_idx = query_int("idx", 0) or 0
st.session_state.ex_idx = min(max(int(st.session_state.ex_idx), 0), len(ds.test_y) - 1)
if "ex_n" not in st.session_state:
    q_n = query_int("n", 2000)
    st.session_state.ex_n = q_n if q_n in N_CHOICES else 2000

with st.sidebar:
    ckpt = st.selectbox(
        "Checkpoint",
        paths,
        key="ex_ckpt",
        format_func=lambda p: checkpoint_label(labels[p], metas[p]),
        on_change=_on_checkpoint_change,
    )
    spec = st.text_input(
        "σ function",
        key="ex_sigma",
        help="`constant:0.25`, or `knn:SIGMA_B,R,K[,m=M][,min=A][,max=B]` "
        "(σ(x) = σ_b·exp(r·(mean distance to the K nearest training points − m))). "
        "Defaults to the checkpoint's training σ.",
    ).strip()
    idx = st.number_input("Test index", min_value=0, max_value=len(ds.test_y) - 1, step=1, key="ex_idx")
    st.button("Random test point", key="ex_random", width="stretch", on_click=_random_index, args=(len(ds.test_y),))
    with st.expander("Monte Carlo settings"):
        n = st.select_slider("n (estimation samples)", options=N_CHOICES, key="ex_n")
        n0 = st.number_input("n0 (selection samples)", min_value=10, max_value=1000, value=100, step=10)
        alpha = st.number_input("α (failure probability)", min_value=1e-6, max_value=0.5, value=0.001, format="%.4f")
        seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1)

set_query(dataset=dataset_name, ckpt=labels[ckpt], sigma=spec, idx=int(idx), n=int(n))

with stop_on_error():
    res = explore(
        dataset_name, ckpt, Path(ckpt).stat().st_mtime, spec, int(idx), int(n0), int(n), float(alpha), int(seed)
    )

names = ds.class_names

# ---------------------------------------------------------------- summary
cols = st.columns(6)
cols[0].metric("True label", names[res.label])
cols[1].metric(
    "Smoothed prediction",
    "abstains" if res.abstains else names[res.predict],
    delta=None if res.abstains else ("correct" if res.correct else "wrong"),
    delta_color="normal" if res.correct else "inverse",
)
cols[2].metric("σ(x)", f"{res.sigma:.4f}")
cols[3].metric("p_A lower bound", f"{res.p_a_lower:.4f}", help=f"one-sided Clopper-Pearson at α = {res.alpha:g}")
cols[4].metric("Sound radius", f"{res.radius:.4f}", help="a guarantee: no L2 perturbation this small changes g(x)")
cols[5].metric(
    "Naive radius", f"{res.naive_radius:.4f}", help="σ(x)·Φ⁻¹(p_A): NOT a guarantee when σ depends on x"
)
if res.abstains:
    st.warning(
        f"The smoothed classifier **abstains** here: the lower bound on p_A ({res.p_a_lower:.4f}) is not above 1/2, "
        "so nothing is certified.",
        icon="✋",
    )
if res.r > 0:
    st.info(
        f"σ depends on x (semi-elasticity r = {res.r:g}, dimension N = {res.dim}). The naive radius plugs σ(x) into "
        "Cohen's formula as if σ were constant: **it is not a guarantee**. The sound radius accounts for σ changing "
        "by up to a factor exp(r·d) at distance d.",
        icon="⚠️",
    )
else:
    st.caption("Constant σ: the sound and the naive radius coincide (Cohen et al. 2019).")

# ---------------------------------------------------------------- images
left, right = st.columns([1, 3])
with left:
    st.plotly_chart(
        plots_explore.image_grid(
            res.image[None], titles=[f"#{res.idx} · label {names[res.label]}"], cols=1, cell_px=220
        ),
        key="ex_image",
    )
    if res.neighbours is not None:
        context = test_sigmas(dataset_name, spec)
        fig = plots.sigma_histogram_figure(context, nbins=25)
        fig.add_vline(x=res.sigma, line_dash="dash", line_width=2, annotation_text=f"#{res.idx}")
        fig.update_layout(title=f"σ(x) over {len(context)} test points", height=300, showlegend=False)
        st.plotly_chart(fig, key="ex_sigma_context")
with right:
    if res.neighbours is not None:
        nb = res.neighbours
        st.plotly_chart(
            plots_explore.image_grid(
                nb.images,
                titles=[f"{names[int(y)]}<br>d = {d:.2f}" for d, y in zip(nb.distances, nb.labels)],
                cols=min(10, len(nb.indices)),
                title=f"The k = {len(nb.indices)} nearest training images (mean L2 distance {nb.distances.mean():.3f})",
                cell_px=95,
            ),
            key="ex_neighbours",
        )
    else:
        st.markdown(
            f"**Constant σ = {res.sigma:.4f}** for every input; there are no neighbours to look at. "
            "Choose a `knn:` σ function to see σ(x) adapt to the training data."
        )

noisy_titles = [f"f → {names[int(c)]}" for c in res.noisy_predictions]
st.plotly_chart(
    plots_explore.image_grid(
        res.noisy,
        titles=noisy_titles,
        cols=8,
        title=f"{len(res.noisy)} noisy copies x + N(0, σ(x)²·I) with σ(x) = {res.sigma:.4f} "
        "(clipped to [0, 1] for display)",
        cell_px=100,
    ),
    key="ex_noisy",
)

c1, c2 = st.columns(2)
with c1:
    st.plotly_chart(
        plots_explore.vote_histogram(
            res.counts, names, int(np.argmax(res.counts)) if res.abstains else res.predict, res.label
        ),
        key="ex_votes",
    )
with c2:
    st.plotly_chart(plots_explore.radius_bars(res.radius, res.naive_radius), key="ex_radius")
    st.caption(
        f"CERTIFY with n0 = {res.n0:,} selection and n = {res.n:,} estimation samples, α = {res.alpha:g}, "
        f"σ function `{res.sigma_spec}`."
    )
