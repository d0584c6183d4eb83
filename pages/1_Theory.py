"""Theory: the curse of dimensionality for input-dependent smoothing (no model needed)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages._ui import entered_page, set_query, setup_page, shown
from pages._ui.numbers import DEFAULT_PRESET, DIM_PRESETS, MAX_DIM, link_note, link_number, refused_number
from smoothviz import bounds, plots
from smoothviz.sigma import R_MAX, SIGMA_MAX, SIGMA_MIN

setup_page("Theory", ":material/functions:")

CURVE_DIMS = (64, 784, 3072, 150528)
RATIO_CHOICES = (0.8, 0.9, 0.95, 0.98, 0.99, 1.0, 1.01, 1.02, 1.05, 1.1, 1.25)
# (default, smallest, largest) of each number the page reads; sigma0 is a slider over a part of the
# range sigma functions allow (smoothviz.sigma), r may be any semi-elasticity a spec may hold
NUMBERS = {
    "dim": (1000, 2, MAX_DIM),
    "sigma0": (0.25, max(0.01, SIGMA_MIN), min(1.0, SIGMA_MAX)),
    "pa": (0.99, 0.5, 0.999999),
    "r": (0.02, 0.0, R_MAX),
}
NAMES = {"dim": "N", "sigma0": "σ₀", "pa": "p_A", "r": "r"}


@st.cache_data(max_entries=64, show_spinner=False)
def worst_case_grid(sigma0: float, p_a: float, dim: int, ratios: tuple[float, ...], d_max: float):
    distance = np.linspace(0.0, d_max, 81)
    probs = bounds.worst_case_probability(
        sigma0, sigma0 * np.asarray(ratios)[:, None], distance[None, :], p_a, dim
    )
    return distance, probs


@st.cache_data(max_entries=64, show_spinner=False)
def radius_vs_r_grid(sigma0: float, p_a: float, dims: tuple[int, ...], r_max: float):
    r = np.linspace(0.0, r_max, 31)
    radii = bounds.input_dependent_radius(p_a, sigma0, r[None, :], np.asarray(dims)[:, None], rtol=1e-6)
    return r, radii


@st.cache_data(max_entries=64, show_spinner=False)
def band_grid(p_a: float):
    dims = np.unique(np.round(np.logspace(np.log10(2), np.log10(MAX_DIM), 24)).astype(np.int64))
    low, high = bounds.admissible_sigma_band(p_a, dims)
    return dims, low, high


@st.cache_data(max_entries=64, show_spinner=False)
def sound_vs_naive_grid(sigma0: float, r: float, dim: int):
    p = np.linspace(0.5, 0.9999, 80)
    return p, bounds.input_dependent_radius(p, sigma0, r, dim, rtol=1e-8), bounds.naive_radius(p, sigma0)


@st.cache_data(max_entries=256, show_spinner=False)
def headline_numbers(sigma0: float, p_a: float, r: float, dim: int) -> tuple[float, ...]:
    """Cohen radius, sound radius at r, the sigma1/sigma0 band at distance 0, and the largest r for half the radius."""
    cohen = float(bounds.cohen_radius(p_a, sigma0))
    sound = float(bounds.input_dependent_radius(p_a, sigma0, r, dim, rtol=1e-8))
    low0, high0 = (float(v) for v in bounds.admissible_sigma_band(p_a, dim))
    r_half = float(bounds.max_semi_elasticity(cohen / 2, sigma0, p_a, dim, rtol=1e-6))
    return cohen, sound, low0, high0, r_half


st.title("The curse of dimensionality")
st.markdown(
    "An input-dependent σ(x) is only certified if the smoothed classifier stays confident when "
    "*both* the centre and the noise level move. In N dimensions, two Gaussians whose standard "
    "deviations differ by a factor κ are far apart (their norms concentrate at σ√N), so the worst "
    "case collapses unless κ is within about 1 ± O(1/√N) of 1. Everything below is exact "
    "Neyman–Pearson worst-case arithmetic; no model is involved."
)

# The link seeds the widgets whenever the page is entered; on the page's own reruns the widgets lead
# and the link follows them.
entering = entered_page()
if entering or "preset" not in st.session_state:
    q_preset = st.query_params.get("preset")
    if q_preset is not None and q_preset not in DIM_PRESETS:
        link_note(f"The link's preset={shown(q_preset)} is not one of {', '.join(DIM_PRESETS)}; "
                  f"using {DEFAULT_PRESET}.")
    st.session_state.preset = q_preset if q_preset in DIM_PRESETS else DEFAULT_PRESET
for number_key, limits in NUMBERS.items():
    if entering or number_key not in st.session_state:
        st.session_state[number_key] = link_number(number_key, *limits, name=NAMES[number_key])

c1, c2, c3, c4 = st.columns(4)
preset = c1.selectbox(
    "Input dimension (preset)", list(DIM_PRESETS), key="preset",
    help="; ".join(f"{k}: {v[0]}, N = {v[1]:,}" for k, v in DIM_PRESETS.items() if v[1]),
)
# Typed numbers have no bounds in the widget (a browser keeps an out-of-range entry on screen without
# sending it, so the page would compute with the previous value); they are checked here instead.
if preset == "custom":
    dim = c1.number_input(f"N (custom dimension, {NUMBERS['dim'][1]:,} to {MAX_DIM:,})", step=1, key="dim")
else:
    dim = int(DIM_PRESETS[preset][1])
    c1.caption(f"{DIM_PRESETS[preset][0]}: N = {dim:,}")
sigma0 = float(c2.slider("σ₀ (noise std at x₀, pixel units)", NUMBERS["sigma0"][1], NUMBERS["sigma0"][2],
                         step=0.01, key="sigma0"))
p_a = c3.number_input("p_A (lower bound on the top-class probability)", step=0.001, format="%.6f", key="pa",
                      help="in [0.5, 0.999999]")
r = c4.number_input("semi-elasticity r (per unit L2 distance)", step=0.005, format="%.4f", key="r",
                    help=f"in [0, {R_MAX:g}]")
typed = [("dim", dim)] if preset == "custom" else []
# a list, not a generator: every refused value says so
if any([refused_number(NAMES[k], v, *NUMBERS[k][1:]) for k, v in [*typed, ("pa", p_a), ("r", r)]]):
    st.stop()
dim, p_a, r = int(dim), float(p_a), float(r)
set_query(
    preset=None if preset == DEFAULT_PRESET else preset,
    dim=dim if preset == "custom" and dim != NUMBERS["dim"][0] else None,
    **{k: None if v == NUMBERS[k][0] else repr(v) for k, v in (("sigma0", sigma0), ("pa", p_a), ("r", r))},
)

cohen, sound, low0, high0, r_half = headline_numbers(sigma0, p_a, r, dim)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Cohen radius σ₀Φ⁻¹(p_A)", f"{cohen:.4f}", help="Constant σ = σ₀ (r = 0).")
m2.metric("Sound radius at r", f"{sound:.4f}", delta=f"{sound - cohen:+.4f} vs Cohen", delta_color="off")
m3.metric("Largest r still certifying Cohen/2", f"{r_half:.4g}",
          help="The largest semi-elasticity whose sound radius still reaches Cohen's radius / 2. The naive radius "
               "σ(x)Φ⁻¹(p_A) would claim Cohen's radius for any r: it is not a guarantee.")
m4.metric("σ₁/σ₀ still certified at distance 0", f"±{max(1 - low0, high0 - 1):.1%}",
          help=f"Admissible band [{low0:.5f}, {high0:.5f}]: outside it even distance 0 is not certified.")

st.subheader("Worst-case probability vs distance")
ratios = st.multiselect("σ₁/σ₀ ratios", RATIO_CHOICES, default=[0.95, 0.99, 1.0, 1.01, 1.05], key="ratios")
ratios = tuple(sorted(ratios)) or (1.0,)
d_max = max(1.5 * cohen, 0.05)
distance, probs = worst_case_grid(sigma0, p_a, dim, ratios, round(d_max, 6))
st.plotly_chart(plots.worst_case_figure(distance, ratios, probs, p_a), key="fig_worst")
st.caption("At σ₁/σ₀ = 1 this is Cohen's Φ(Φ⁻¹(p_A) − d/σ₀); any other ratio drops faster, "
           "and the drop at distance 0 grows with N.")

left, right = st.columns(2)
with left:
    st.subheader("Certified radius vs r")
    r_max = float(st.slider("largest r on the axis", 0.01, 1.0, max(0.2, min(1.0, 2 * r)), 0.01, key="rmax"))
    if r > r_max:
        st.caption(f"The axis is extended to your r = {r:g} (beyond {r_max:g}).")
    r_axis = max(r_max, r)
    dims = tuple(sorted(set(CURVE_DIMS) | {dim}))
    r_grid, radii = radius_vs_r_grid(sigma0, p_a, dims, r_axis)
    st.plotly_chart(plots.radius_vs_r_figure(r_grid, dims, radii, cohen, current_r=r), key="fig_radius_r")
with right:
    st.subheader("Admissible σ₁/σ₀ band vs dimension")
    band_dims, low, high = band_grid(p_a)
    st.plotly_chart(plots.sigma_band_figure(band_dims, low, high, current=dim), key="fig_band")

st.subheader("Sound vs naive radius")
p_grid, sound_grid, naive_grid = sound_vs_naive_grid(sigma0, r, dim)
st.plotly_chart(plots.sound_vs_naive_figure(p_grid, sound_grid, naive_grid), key="fig_sound_naive")
st.caption(
    "The naive radius plugs σ(x) into Cohen's formula as if σ were constant; it over-claims. The sound "
    "radius is the largest R with worst case > 1/2 for every d ≤ R and σ₁ ∈ [σ₀e^{−rd}, σ₀e^{rd}] "
    "(Sukenik, Kuvshinov & Günnemann, ICML 2022)."
)
