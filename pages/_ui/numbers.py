"""Numbers the pages read from their link and their widgets, checked against their ranges.

A link value a page cannot use is named in a note and replaced (by the default, or by the nearest
end of the range), so a widget never holds a value it cannot show; a typed value outside its range
is refused in one line instead of bouncing silently back.
"""

from __future__ import annotations

import math

import streamlit as st

from pages._ui import ERROR_ICON, shown

LINK_OFF_ICON = ":material/link_off:"
# the input dimensions offered by the pages that need no model: preset -> (label, N; None: typed)
DIM_PRESETS = {
    "digits": ("digits (8×8)", 64),
    "mnist": ("MNIST / Fashion-MNIST (28×28)", 784),
    "cifar10": ("CIFAR-10 (3×32×32)", 3072),
    "imagenet": ("ImageNet (3×224×224)", 150528),
    "custom": ("custom", None),
}
DEFAULT_PRESET = "cifar10"
MAX_DIM = 150528


def link_note(text: str) -> None:
    """A link value the page cannot use as it stands, said once in one line, so every page says it alike."""
    st.warning(text, icon=LINK_OFF_ICON)


def link_number(key: str, default: float, lo: float, hi: float, name: str | None = None) -> float:
    """The link's number ``key`` for a widget's first run: malformed → ``default``, outside [lo, hi] → clamped,
    each with a note (saying ``name =`` the value used, when given), so the widget never holds a value it cannot
    show. Integers stay integers when ``default`` is one."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    integer = isinstance(default, int)
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
    using = f"{name} = " if name is not None else ""
    if not math.isfinite(value) or (integer and not value.is_integer()):
        link_note(f"The link's {key}={shown(raw)} is not {'an integer' if integer else 'a finite number'}; "
                  f"using {using}{default:g}.")
        return default
    if not lo <= value <= hi:
        clamped = min(max(value, lo), hi)
        link_note(f"The link's {key}={shown(raw)} is outside [{lo:g}, {hi:g}]; using {using}{clamped:g}.")
        value = clamped
    return int(value) if integer else value


def refused_number(name: str, value: float | None, lo: float, hi: float) -> bool:
    """True, with one error line naming the value, when a typed ``value`` is empty or outside [lo, hi], so the
    page computes nothing from it."""
    if value is None:
        st.error(f"{name} is empty: enter a number in [{lo:g}, {hi:g}].", icon=ERROR_ICON)
        return True
    if not (math.isfinite(value) and lo <= value <= hi):
        st.error(f"{name} = {value:g} is outside [{lo:g}, {hi:g}]; nothing is computed until it is inside.",
                 icon=ERROR_ICON)
        return True
    return False


def check_number(errors: list[str], label: str, value: float | None, low: float, high: float,
                 open_ends: bool = False) -> None:
    """Append one line to ``errors`` when ``value`` is empty, not finite or outside [low, high] (or (low, high)
    with ``open_ends``), so a form can list every refused value before it starts anything."""
    if value is None:
        errors.append(f"{label} is empty")
        return
    inside = (low < value < high) if open_ends else (low <= value <= high)
    if not math.isfinite(value) or not inside:
        where = f"({low:g}, {high:g})" if open_ends else f"[{low:g}, {high:g}]"
        errors.append(f"{label} = {value:g} is outside {where}")
