"""The shipped example runs: a small versioned file, loaded once into a store, consistent with the
analysis and the certificate mathematics recomputed from its own rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smoothviz import analysis, bounds, data
from smoothviz.errors import StoreError
from smoothviz.examples import (
    EXAMPLES_FILE, KIND, example_runs, export_examples, load_examples, read_examples,
)
from smoothviz.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "examples.db")
    yield s
    s.close()


def test_the_examples_file_is_small_and_holds_constant_and_knn_runs_of_two_datasets():
    assert EXAMPLES_FILE.stat().st_size < 1_000_000
    runs = read_examples()
    kinds = {(r["config"]["dataset"], r["config"]["sigma_spec"].split(":")[0]) for r in runs}
    assert {("digits", "constant"), ("digits", "knn"), ("fashion-mnist", "constant"),
            ("fashion-mnist", "knn")} <= kinds
    for run in runs:
        assert len(run["rows"]) == len(run["config"]["indices"]) > 0


def test_loaded_runs_agree_with_the_analysis_and_the_certificate_recomputed_from_their_rows(store):
    ids = load_examples(store)
    examples = read_examples()
    assert len(ids) == len(examples) == len(set(ids))
    for example, run_id in zip(examples, ids):
        run = store.run(run_id)
        assert run["kind"] == KIND and run["status"] == "done"
        assert run["options"]["example"] == example["key"]
        assert run["done"] == run["total"] == len(example["config"]["indices"])
        results = store.results(run_id)
        table = analysis.accuracy_table(results, example["table"]["radii"])
        assert table["certified_accuracy"].tolist() == pytest.approx(example["table"]["certified_accuracy"])
        n, alpha, r = int(run["n"]), float(run["alpha"]), float(run["r"] or 0.0)
        dim = math.prod(data.DATASET_INFO[run["dataset"]].input_shape)
        counts = np.array(results["counts"].tolist())
        assert (counts.sum(axis=1) == n).all()
        certified = results["predict"].to_numpy() >= 0
        n_a = counts[np.arange(len(counts)), np.where(certified, results["predict"], 0)]
        p_a = results["p_a_lower"].to_numpy()
        assert p_a[certified] == pytest.approx(bounds.clopper_pearson_lower(n_a[certified], n, alpha), rel=1e-12)
        assert (p_a[certified] > 0.5).all() and (p_a[~certified] <= 0.5).all()
        sigma = results["sigma"].to_numpy()
        assert results["radius"].to_numpy()[certified] == pytest.approx(
            bounds.input_dependent_radius(p_a[certified], sigma[certified], r, dim), rel=1e-6)
        assert results["naive_radius"].to_numpy()[certified] == pytest.approx(
            bounds.naive_radius(p_a[certified], sigma[certified]), rel=1e-9)
        assert (results["radius"].to_numpy()[~certified] == 0).all()
        assert (results["correct"] == (results["predict"] == results["label"])).all()


def test_loading_twice_adds_nothing(store):
    first = load_examples(store)
    before = len(store.runs())
    assert load_examples(store) == first
    assert len(store.runs()) == before == len(first)


def test_an_interrupted_load_is_replaced_by_a_complete_run(store):
    example = read_examples()[0]
    config = dict(example["config"])
    options = dict(config.pop("options") or {}, example=example["key"], example_version=1)
    broken = store.create_run(**config, options=options, kind=KIND)  # created, rows never added
    ids = load_examples(store)
    assert broken not in ids
    assert example_runs(store)[example["key"]] == ids[0]
    with pytest.raises(StoreError):
        store.run(broken)


def test_exporting_loaded_runs_gives_the_same_rows_back(store, tmp_path):
    ids = load_examples(store)
    out = tmp_path / "again.json"
    export_examples(store, ids, out)
    again = read_examples(out)
    for mine, shipped in zip(again, read_examples()):
        assert mine["key"] == shipped["key"]
        assert mine["rows"] == shipped["rows"]
        assert mine["table"] == shipped["table"]
        assert {k: v for k, v in mine["config"].items() if k != "options"} == \
            {k: v for k, v in shipped["config"].items() if k != "options"}


@pytest.mark.parametrize("content", ["not json", json.dumps({"format": "other", "version": 1}),
                                     json.dumps({"format": "smoothviz-examples", "version": 1, "runs": []})])
def test_a_damaged_examples_file_is_refused_in_one_line(store, tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(StoreError) as info:
        load_examples(store, bad)
    assert "\n" not in str(info.value) and "bad.json" in str(info.value)
    assert len(store.runs()) == 0
