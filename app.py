"""smoothviz dashboard, Overview page (entry point: ``streamlit run app.py``; pages/ holds the rest)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._ui import (
    ERROR_ICON, PAGES, ROOT, executing_runs, get_store, offer_examples, one_line, run_label, setup_page, show_error,
)
from smoothviz.errors import SmoothvizError
from smoothviz.plots import plural
from smoothviz.plots_certificate import certificate_figure, certificate_picture

setup_page("Overview", ":material/home:")

st.title("smoothviz: certified robustness by randomized smoothing")
st.markdown(
    "A **smoothed classifier** predicts the class that a base classifier *f* outputs most often "
    "under Gaussian noise. Because the noise blurs any small shift of the input, the prediction "
    "provably cannot change within an L2 ball whose radius follows from how confident the vote is. "
    "Radii here are L2 distances in pixel units of images scaled to [0, 1]."
)
st.latex(
    r"g(x) = \arg\max_c \; \mathbb{P}\big(f(x+\varepsilon) = c\big), \qquad "
    r"\varepsilon \sim \mathcal{N}(0, \sigma^2 I)"
)
st.markdown(
    "Monte Carlo sampling gives a one-sided Clopper–Pearson lower bound $\\underline{p_A}$ on the "
    "top-class probability (level $1-\\alpha$). With a **constant** σ, Cohen et al. (2019) certify"
)
st.latex(r"R = \sigma\, \Phi^{-1}\big(\underline{p_A}\big).")
picture = certificate_picture()
st.plotly_chart(certificate_figure(), key="certificate_picture")
st.caption(
    f"In two dimensions: x₀ with σ = {picture.sigma:g} noise. The base classifier says A left of the dashed line, so "
    f"a share p_A = {picture.p_a:g} of the noisy copies vote A and the certified radius is σΦ⁻¹(p_A) = "
    f"{picture.radius:.2f}: every point of the black ball is classified A by the smoothed classifier. The ball "
    "touches the boundary because this straight-line classifier is the worst case; the point x₀ + δ just outside "
    "is classified B, so no larger radius could be promised."
)
st.markdown(
    "With an **input-dependent** σ(x) (more noise where the data is sparse), plugging σ(x) into "
    "that formula — the *naive* radius — is **not a guarantee**: at a shifted input x₁ the noise "
    "level is σ(x₁) ≠ σ(x₀), and the worst-case classifier exploits the different spread. If σ is "
    "*r-semi-elastic*,"
)
st.latex(r"\big|\ln\sigma(x) - \ln\sigma(y)\big| \le r\,\|x-y\|_2,")
st.markdown(
    "the sound certificate (Sukenik, Kuvshinov & Günnemann, ICML 2022) compares "
    "$\\mathcal N(x_0,\\sigma_0^2 I)$ with $\\mathcal N(x_1,\\sigma_1^2 I)$ by the Neyman–Pearson "
    "lemma: the worst set is a ball (or its complement), its probability a non-central χ² with "
    "N degrees of freedom (N = input dimension). The radius is"
)
st.latex(
    r"R = \sup\Big\{R' : \xi_N(\sigma_0, \sigma_1, d, \underline{p_A}) > \tfrac12 \;\; "
    r"\forall\, d \le R',\; \sigma_1 \in [\sigma_0 e^{-rd}, \sigma_0 e^{rd}] \Big\}"
)
st.markdown(
    "where ξ is the worst-case probability of the top class at x₁. It equals Cohen's radius at "
    "r = 0 and shrinks quickly with N: the **curse of dimensionality** (see *Theory*). Whatever "
    "σ does, n Monte Carlo samples cap every radius at the **waterfall ceiling**"
)
st.latex(
    r"R \le \sigma\,\Phi^{-1}\big(\alpha^{1/n}\big) \quad "
    r"(\approx 3.8\,\sigma \text{ at } n=10^5,\ \alpha=10^{-3})."
)

st.header("Pages")
descriptions = {
    "theory": "worst cases, radius vs r and dimension — instant, no model",
    "certify": "certify test points with a checkpoint and a σ function (background job)",
    "compare": "certified accuracy curves, radius distributions, per-class fairness, CSV",
    "explorer": "one test point: its noise, votes, neighbours and radii",
    "playground": "2-D toy data: decision regions and certified circles",
    "train": "train a model with noise augmentation (background job)",
    "counterexamples": "explicit classifiers that break naive input-dependent certificates, on formulas and real data",
    "tradeoffs": "sweeps over σ_b and r: heatmaps, Pareto front, envelope, error bars, per-class gaps",
}
cols = st.columns(3)
i = 0
for key, text in descriptions.items():
    if (ROOT / PAGES[key]).exists():
        with cols[i % 3]:
            st.page_link(PAGES[key], label=Path(PAGES[key]).stem.split("_", 1)[1].replace("_", " "))
            st.caption(text)
        i += 1

st.header("Runs in the store")


def manage_runs(runs) -> None:
    """Pick a run, rename it or delete it (after a confirmation; a running run is refused)."""
    rows = {int(r["id"]): r for _, r in runs.iterrows()}
    with st.expander("Rename or delete a run", icon=":material/edit:"):
        run_id = st.selectbox("run", list(rows), format_func=lambda i: f"{run_label(rows[i])} · {rows[i]['status']}",
                              key="manage_run")
        if run_id is None:
            return
        row = rows[run_id]
        c1, c2 = st.columns([3, 1])
        new_name = c1.text_input("new name", value=str(row["name"]), key=f"rename_text{run_id}")
        if c2.button("Rename", key="rename_button", icon=":material/edit:"):
            try:
                name = get_store().rename_run(run_id, new_name)
            except SmoothvizError as exc:
                show_error(exc)
            else:
                st.session_state["_overview_note"] = f"Run #{run_id} is now called {name!r}."
                st.rerun()
        if st.session_state.get("_confirm_delete") != run_id:
            if st.button(f"Delete run #{run_id}…", key="delete_button", icon=":material/delete:"):
                if run_id in executing_runs():
                    st.error(f"Run #{run_id} is being certified; cancel it on the Certify page and delete it once "
                             "it has stopped.", icon=ERROR_ICON)
                else:
                    st.session_state["_confirm_delete"] = run_id
                    st.rerun()
            return
        st.warning(f"Delete run {run_label(row)} and its {plural(int(row['done']), 'stored result')}? "
                   "This cannot be undone.", icon=":material/warning:")
        d1, d2 = st.columns(2)
        if d1.button("Yes, delete it", key="delete_confirm", type="primary"):
            st.session_state.pop("_confirm_delete", None)
            try:
                get_store().delete_run(run_id)
            except SmoothvizError as exc:
                st.session_state["_overview_error"] = one_line(str(exc))
            else:
                st.session_state["_overview_note"] = f"Run #{run_id} was deleted."
            st.rerun()
        if d2.button("Keep it", key="delete_cancel"):
            st.session_state.pop("_confirm_delete", None)
            st.rerun()


try:
    runs = get_store().runs()
except SmoothvizError as exc:
    show_error(exc)
else:
    loaded = st.session_state.pop("_examples_loaded", None)
    if loaded:
        st.success(f"Loaded {plural(len(loaded), 'example run')}: finished certifications of the shipped checkpoints.")
        st.page_link(PAGES["compare"], label="Compare the example runs →",
                     query_params={"runs": ",".join(map(str, loaded))})
    for key, show in (("_overview_note", st.success), ("_overview_error", st.error)):
        message = st.session_state.pop(key, None)
        if message:
            show(message, icon=ERROR_ICON if show is st.error else ":material/check_circle:")
    if runs.empty:
        st.info(
            "No runs yet. Load the example runs below (one click, a few seconds), start one on the **Certify** page, "
            "or from a shell:\n\n"
            "`python -m smoothviz certify --dataset digits --model assets/<checkpoint>.pt --n 1000 --points 50`"
        )
        offer_examples("examples_overview")
    else:
        wanted = ["id", "name", "kind", "dataset", "sigma_spec", "r", "n0", "n", "alpha", "status", "done", "total",
                  "created"]  # columns of Store.runs()
        shown = runs[[c for c in wanted if c in runs.columns]].copy()
        shown.insert(shown.columns.get_loc("done"), "progress", runs["done"] / runs["total"].clip(lower=1))
        st.dataframe(shown, hide_index=True, width="stretch", column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "sigma_spec": st.column_config.TextColumn("σ function"),
            "kind": st.column_config.TextColumn("kind", help="certify: run here or by the CLI; import: a "
                                                "reference-format log; example: shipped with smoothviz"),
        })
        st.page_link(PAGES["compare"], label="Compare these runs →")
        manage_runs(runs)
