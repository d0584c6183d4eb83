"""Sample explorer: one test point under randomized smoothing with sigma(x).

The model is a smoothviz checkpoint, or a model file (reference-code, SmoothAdv or MACER
checkpoint, torchvision:NAME with weights; loaded weights-only) on a registered dataset or the
user's files (imagefolder:PATH, npz:FILE), with optional kNN reference points.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st

from pages._ui import (
    ERROR_ICON,
    PAGES,
    WARNING_ICON,
    absolute,
    checkpoint_label,
    display_path,
    entered_page,
    foreign_model,
    get_store,
    list_checkpoints,
    load_dataset,
    load_model,
    load_reference,
    load_sigma,
    model_misfit,
    set_query,
    setup_page,
    shown,
    stop_on_error,
)
from pages._ui.live_section import certify_live
from pages._ui.numbers import link_note
from smoothviz import plots, plots_explore
from smoothviz.data import DATASET_INFO, DEFAULT_DATASET
from smoothviz.errors import SmoothvizError
from smoothviz.sigma import parse_sigma_spec

setup_page("Sample explorer", ":material/image_search:")
st.title("Sample explorer")
st.caption(
    "One test point x under Gaussian smoothing with σ(x): the noisy copies the base classifier votes "
    "on, the Monte Carlo lower bound on p_A, and the certified L2 radius. For a kNN σ(x) the sound "
    "radius follows Sukenik et al. (2022); the naive radius σ(x)·Φ⁻¹(p_A) is shown only for comparison."
)

IMAGE_DATASETS = [name for name, info in DATASET_INFO.items() if len(info.input_shape) > 1]
MODEL_MODES = ("a smoothviz checkpoint", "a model file")
N_CHOICES = (1000, 2000, 5000, 10000)
MAX_NEIGHBOUR_IMAGES = 40  # a kNN σ may use hundreds of neighbours; the grid shows the nearest ones
MAX_SPEC_CHARS = 200  # far longer than any sigma spec; a longer text is refused before it is parsed
# (default, smallest, largest) of the Monte Carlo settings; the widgets have no bounds (a browser keeps
# an out-of-range entry on screen without sending it), the page checks the values instead
SETTINGS = {"n0": (100, 10, 1000), "alpha": (0.001, 1e-6, 0.5), "seed": (0, 0, 2**31 - 1)}


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` cannot be used as a sigma function (None when it parses)."""
    if len(spec) > MAX_SPEC_CHARS:
        return f"The σ function is {len(spec):,} characters long; a spec has at most {MAX_SPEC_CHARS}."
    try:
        parse_sigma_spec(spec)
    except SmoothvizError as exc:
        return str(exc)
    return None


def stored_run(dataset: str, ckpt_label: str | None, spec: str, idx: int) -> int | None:
    """The newest run of the store that certified this point with this checkpoint and σ function, if any."""
    if ckpt_label is None:
        return None
    try:
        store = get_store()
        runs = store.runs()
        for row in runs.itertuples():
            if row.dataset == dataset and row.sigma_spec == spec and row.checkpoint and row.done > 0 \
                    and display_path(Path(row.checkpoint)) == ckpt_label and idx in store.done_indices(int(row.id)):
                return int(row.id)
    except SmoothvizError:
        return None
    return None


@st.cache_data(max_entries=8, show_spinner="σ(x) over the test set…")
def test_sigmas(dataset: str, spec: str, reference: str | None = None):
    """sigma(x) on a fixed subset of test points, to place one point's sigma among the others."""
    from smoothviz.explorer import sample_test_sigmas

    return sample_test_sigmas(load_sigma(dataset, spec, reference), load_dataset(dataset))


@st.cache_data(max_entries=64, show_spinner="Sampling noisy copies and certifying…")
def explore(dataset: str, source: tuple, spec: str, idx: int, n0: int, n: int, alpha: float, seed: int,
            reference: str | None = None):
    """The explorer's data for one point, cached by identifiers. ``source``: ("checkpoint", path,
    mtime) or ("file", model, weights, mtime); ``mtime`` invalidates a changed file. With
    ``reference``, the kNN neighbours are the reference points."""
    from smoothviz.explorer import explore_point

    if source[0] == "checkpoint":
        model, _ = load_model(source[1], dataset=dataset)
    else:
        model = foreign_model(source[1], source[2]).module
    ds = load_dataset(dataset)
    if reference:
        points = load_reference(reference, dataset)
        ds = replace(ds, train_x=points.x, train_y=points.y)
    return explore_point(model, ds, idx, load_sigma(dataset, spec, reference), n0=n0, n=n, alpha=alpha, seed=seed)


def mtime(path: str) -> float:
    """A file's modification time (0 for torchvision:NAME and missing files), to key caches."""
    return Path(path).stat().st_mtime if Path(path).exists() else 0.0


def _random_index(size: int) -> None:
    """Jump to a random test point (a callback: it runs before the index widget is drawn)."""
    st.session_state.ex_idx = int(np.random.default_rng().integers(size))


# ---------------------------------------------------------------- model and data
entering = entered_page()
with st.sidebar:
    st.header("Point")
    model_mode = st.radio("Model", MODEL_MODES, key="ex_model_mode", horizontal=True)
reference_text = ""
if model_mode == MODEL_MODES[1]:
    with st.sidebar:
        model_text = st.text_input(
            "Model file, or torchvision:NAME", key="ex_model_path",
            help="A checkpoint of the reference code of Cohen et al. 2019, SmoothAdv or MACER, or torchvision:NAME "
                 "with a weights file; loaded weights-only, nothing in it runs.").strip()
        weights_text = st.text_input("Weights file (for torchvision:NAME)", key="ex_model_weights").strip() \
            if model_text.startswith("torchvision:") else ""
        data_text = st.text_input(
            "Data: a dataset name, imagefolder:PATH or npz:FILE", key="ex_data_source",
            help="Default: the dataset the model was trained on, when smoothviz has it.").strip()
        reference_text = st.text_input("kNN reference points (imagefolder:PATH or npz:FILE)",
                                       key="ex_sigma_reference").strip()
    if not model_text:
        st.info("Give a model file (reference-code, SmoothAdv or MACER checkpoint), or torchvision:NAME with its "
                "weights, in the sidebar.", icon=":material/info:")
        st.stop()
    model_path = model_text if model_text.startswith("torchvision:") else absolute(model_text)
    weights_path = absolute(weights_text) if weights_text else None
    with stop_on_error():
        info = foreign_model(model_path, weights_path).info
    st.caption(f"Model: {info.source} · takes {list(info.input_shape)}, {info.num_classes} classes · "
               f"normalisation: {info.normalisation}")
    if len(info.input_shape) != 3:
        st.warning("This model takes inputs that are not images; the explorer shows images.", icon=WARNING_ICON)
        st.stop()
    with stop_on_error():
        from smoothviz.data import resolve_name
        from smoothviz.data_sources import is_source, parse_source

        text = data_text or info.dataset or ""
        if not text:
            raise SmoothvizError(f"{info.source} does not say which data it takes; name it in the sidebar")
        dataset_name = parse_source(text).with_defaults(info.preprocess, info.input_shape[0]).name \
            if is_source(text) else resolve_name(text)
        ds = load_dataset(dataset_name)
    misfit = model_misfit(model_path, weights_path, mtime(model_path), dataset_name)
    if misfit:
        st.error(misfit, icon=ERROR_ICON)
        st.stop()
    source = ("file", model_path, weights_path, mtime(model_path))
    if st.session_state.get("_ex_model_key") != (model_path, dataset_name):  # a new model or data: fresh defaults
        st.session_state["_ex_model_key"] = (model_path, dataset_name)
        st.session_state.ex_sigma = f"constant:{info.trained_sigma!r}" if info.trained_sigma else "constant:0.25"
        st.session_state.ex_idx = 0
    num_test = len(ds.test_y)
    link_ckpt = None
    if entering or "ex_n" not in st.session_state:
        st.session_state.ex_n = 2000
else:
    # The link seeds the widgets whenever the page is entered (a shared link, or one from another page);
    # on the page's own reruns the widgets lead. A link value that cannot be used is replaced by the
    # default (or clamped) with a note, never silently.
    if entering or "ex_dataset" not in st.session_state:
        q_dataset = st.query_params.get("dataset", DEFAULT_DATASET)
        if q_dataset in DATASET_INFO and q_dataset not in IMAGE_DATASETS:
            st.info(f"**{q_dataset}** has 2-D inputs: explore it in the 2-D playground instead.",
                    icon=":material/info:")
            st.page_link("pages/5_2D_playground.py", label="Open the 2-D playground", icon=":material/scatter_plot:",
                         query_params={"dataset": q_dataset})
        elif q_dataset not in IMAGE_DATASETS:
            link_note(f"The link's dataset={shown(q_dataset)} is not a dataset of images; showing {DEFAULT_DATASET}.")
        st.session_state.ex_dataset = q_dataset if q_dataset in IMAGE_DATASETS else DEFAULT_DATASET

    with st.sidebar:
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
            icon=WARNING_ICON,
        )
        st.page_link("pages/6_Train.py", label="Go to the Train page", icon=":material/model_training:")
        st.stop()
    paths = [p for p, _ in ckpts]
    metas = dict(ckpts)
    labels = {p: display_path(Path(p)) for p in paths}


    def _on_checkpoint_change() -> None:
        """A new checkpoint brings its own training sigma as the default sigma function."""
        st.session_state.ex_sigma = str(metas[st.session_state.ex_ckpt].get("sigma") or "constant:0.25")

    num_test = len(ds.test_y)
    if entering or st.session_state.get("ex_ckpt") not in paths:
        by_label = {v: k for k, v in labels.items()}
        q_ckpt = st.query_params.get("ckpt") if entering else None
        if q_ckpt is not None and q_ckpt not in by_label:
            link_note(f"The link's ckpt={shown(q_ckpt)} is not one of the checkpoints for {dataset_name}; "
                      f"showing {labels[paths[0]]}.")
        st.session_state.ex_ckpt = by_label.get(q_ckpt, paths[0])
        st.session_state.ex_sigma = str(
            (str(st.query_params.get("sigma") or "").strip() if entering else None)
            or metas[st.session_state.ex_ckpt].get("sigma")
            or "constant:0.25"
        )
    if entering or "ex_idx" not in st.session_state:
        q_idx = st.query_params.get("idx")
        try:
            st.session_state.ex_idx = int(q_idx) if q_idx is not None else 0
        except ValueError:
            link_note(f"The link's idx={shown(q_idx)} is not a test index; showing test point 0.")
            st.session_state.ex_idx = 0
    if entering or "ex_n" not in st.session_state:
        q_n = st.query_params.get("n")
        if q_n is not None and q_n not in {str(c) for c in N_CHOICES}:
            link_note(f"The link's n={shown(q_n)} is not one of {', '.join(map(str, N_CHOICES))}; using 2000.")
        st.session_state.ex_n = int(q_n) if q_n in {str(c) for c in N_CHOICES} else 2000

    with st.sidebar:
        ckpt = st.selectbox(
            "Checkpoint",
            paths,
            key="ex_ckpt",
            format_func=lambda p: checkpoint_label(labels[p], metas[p]),
            on_change=_on_checkpoint_change,
        )
    source = ("checkpoint", ckpt, mtime(ckpt))
    link_ckpt = labels[ckpt]

if not 0 <= st.session_state.ex_idx < num_test:
    clamped = min(max(int(st.session_state.ex_idx), 0), num_test - 1)
    link_note(f"Test index {st.session_state.ex_idx} is outside [0, {num_test - 1}] ({dataset_name} has "
              f"{plots.plural(num_test, 'test point')}); showing {clamped}.")
    st.session_state.ex_idx = clamped

with st.sidebar:
    spec = st.text_input(
        "σ function",
        key="ex_sigma",
        help="`constant:0.25`, or `knn:SIGMA_B,R,K[,m=M][,min=A][,max=B]` "
        "(σ(x) = σ_b·exp(r·(mean distance to the K nearest training points − m))). "
        "Defaults to the checkpoint's training σ.",
    ).strip()
    idx = st.number_input(f"Test index (0 to {num_test - 1})", step=1, key="ex_idx")
    st.button("Random test point", key="ex_random", width="stretch", on_click=_random_index, args=(num_test,),
              icon=":material/casino:")
    with st.expander("Monte Carlo settings"):
        n = st.select_slider("n (estimation samples)", options=N_CHOICES, key="ex_n")
        n0 = st.number_input("n0 (selection samples, 10 to 1000)", value=SETTINGS["n0"][0], step=10, key="ex_n0")
        alpha = st.number_input("α (failure probability, 1e-6 to 0.5)", value=SETTINGS["alpha"][0], step=0.001,
                                format="%.4f", key="ex_alpha")
        seed = st.number_input("Seed", value=SETTINGS["seed"][0], step=1, key="ex_seed")

# A value that cannot be used gets one line naming it, and nothing is computed or written to the URL.
problems = [f"{name} = {value} is outside [{lo:g}, {hi:g}]." for name, value, (_, lo, hi) in
            (("n0", n0, SETTINGS["n0"]), ("α", alpha, SETTINGS["alpha"]), ("seed", seed, SETTINGS["seed"]))
            if value is None or not lo <= value <= hi]
spec_refused = spec_problem(spec)
if spec_refused:
    problems.insert(0, spec_refused)
for problem in problems:
    st.error(problem, icon=ERROR_ICON)
if problems:
    st.stop()
with stop_on_error():
    # a spec that parses can still not fit the data (k above the training size, no training points)
    load_sigma(dataset_name, spec, reference_text or None)

# A model file and the user's files stay out of the link: a link never makes the page read a path.
set_query(dataset=dataset_name if link_ckpt else None, ckpt=link_ckpt, sigma=spec, idx=int(idx), n=int(n))

with stop_on_error():
    res = explore(dataset_name, source, spec, int(idx), int(n0), int(n), float(alpha), int(seed),
                  reference_text or None)

names = ds.class_names
neighbour_names = load_reference(reference_text, dataset_name).class_names if reference_text else names

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
        icon=":material/pan_tool:",
    )
if res.r > 0:
    st.info(
        f"σ depends on x (semi-elasticity r = {res.r:g}, dimension N = {res.dim}). The naive radius plugs σ(x) into "
        "Cohen's formula as if σ were constant: **it is not a guarantee**. The sound radius accounts for σ changing "
        "by up to a factor exp(r·d) at distance d.",
        icon=WARNING_ICON,
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
        context = test_sigmas(dataset_name, spec, reference_text or None)
        fig = plots.sigma_histogram_figure(context, nbins=25)
        fig.add_vline(x=res.sigma, line_dash="dash", line_width=2, annotation_text=f"#{res.idx}")
        fig.update_layout(title=f"σ(x) over {plots.plural(len(context), 'test point')}", height=300,
                          showlegend=False)
        st.plotly_chart(fig, key="ex_sigma_context")
with right:
    if res.neighbours is not None:
        nb = res.neighbours
        shown_nb = min(len(nb.indices), MAX_NEIGHBOUR_IMAGES)
        st.plotly_chart(
            plots_explore.image_grid(
                nb.images[:shown_nb],
                titles=[f"{neighbour_names[int(y)]}<br>d = {d:.2f}" for d, y in zip(nb.distances[:shown_nb], nb.labels)],
                cols=min(10, shown_nb),
                title=f"The k = {len(nb.indices)} nearest training images (mean L2 distance {nb.distances.mean():.3f})"
                + ("" if shown_nb == len(nb.indices) else f"; the {shown_nb} nearest shown"),
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
        title=f"{plots.plural(len(res.noisy), 'noisy copy', 'noisy copies')} x + N(0, σ(x)²·I) with σ(x) = {res.sigma:.4f} "
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
    if not res.abstains and res.r > 0 and res.naive_radius > res.radius:
        # the worst-case classifier for this point's sigma, p_A and r, halfway between the sound and naive radii
        st.page_link(PAGES["counterexamples"], label="This point's witness: a classifier that breaks its naive "
                     "certificate", icon=":material/gpp_bad:", query_params={
                         "dim": str(res.dim), "sigma0": repr(res.sigma), "pa": repr(res.p_a_lower), "r": repr(res.r),
                         "d": repr(0.5 * (res.radius + res.naive_radius))})
        stored = stored_run(dataset_name, link_ckpt, res.sigma_spec, res.idx)
        if stored is not None:
            st.page_link(PAGES["counterexamples"], label=f"Real inputs that refute run #{stored}'s certificates",
                         icon=":material/search:", query_params={"run": str(stored)})

# ---------------------------------------------------------------- certify live
def live_rule(mode: str, cs: str, radius: float | None, budget: int):
    """The sequential rule of the live section, at this page's α and this point's σ model."""
    from smoothviz.sequential_engine import SequentialSettings

    return SequentialSettings.create(mode, cs=cs, radius=radius).rule(float(alpha), budget, res.r, res.dim)


def base_classifier():
    """The base classifier of the model shown, as the engine calls it (argmax of the logits)."""
    from smoothviz.votes import argmax_classifier

    model = load_model(source[1], dataset=dataset_name)[0] if source[0] == "checkpoint" else \
        foreign_model(source[1], source[2]).module
    return argmax_classifier(model.eval())


st.divider()
certify_live((dataset_name, source, spec, reference_text, int(idx), int(n0), float(alpha), int(seed)), live_rule,
             res.idx, res.label, res.sigma, int(n0), int(seed), res.dim, ds.test_x[res.idx], base_classifier(), names)
