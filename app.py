"""smoothviz dashboard, Overview page (entry point: ``streamlit run app.py``; pages/ holds the rest)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._ui import PAGES, ROOT, get_store, setup_page, show_error
from smoothviz.errors import SmoothvizError

setup_page("Overview", "🎯")

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
try:
    runs = get_store().runs()
except SmoothvizError as exc:
    show_error(exc)
else:
    if runs.empty:
        st.info(
            "No runs yet. Start one on the **Certify** page, or from a shell:\n\n"
            "`python -m smoothviz certify --dataset digits --model assets/<checkpoint>.pt --n 1000 --points 50`"
        )
    else:
        wanted = ["id", "name", "dataset", "sigma_spec", "r", "n0", "n", "alpha", "status", "done", "total",
                  "created"]  # columns of Store.runs()
        shown = runs[[c for c in wanted if c in runs.columns]].copy()
        shown.insert(shown.columns.get_loc("done"), "progress", runs["done"] / runs["total"].clip(lower=1))
        st.dataframe(shown, hide_index=True, width="stretch", column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "sigma_spec": st.column_config.TextColumn("σ function"),
        })
        st.page_link(PAGES["compare"], label="Compare these runs →")
