"""Counts in words."""

from smoothviz import cost, plots
from smoothviz.text import plural


def test_plural_agrees_and_separates_thousands():
    assert plural(1, "point") == "1 point" and plural(2, "point") == "2 points"
    assert plural(0, "point") == "0 points"
    assert plural(1437, "point") == "1,437 points"
    assert plural(1, "batch", "batches") == "1 batch" and plural(0, "batch", "batches") == "0 batches"
    assert plural(2, "noisy copy", "noisy copies") == "2 noisy copies"


def test_the_cli_and_the_pages_count_with_the_same_words():
    assert cost.plural is plural and plots.plural is plural
