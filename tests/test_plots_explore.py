"""Figure builders of the explorer, playground and training pages: traces, axis titles, shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from smoothviz import plots_explore as pe


def _all_figures():
    xs = np.linspace(0, 1, 6)
    pred = np.array([[-1, 0, 1, 1, 0, 0]] * 6)
    return [
        pe.image_grid(np.random.default_rng(0).random((5, 1, 8, 8))),
        pe.vote_histogram([1, 2, 3], ["a", "b", "c"], 2, 1),
        pe.radius_bars(0.2, 0.3),
        pe.region_map(xs, xs, pred, ["a", "b"], "t", points=np.zeros((3, 2)), point_labels=np.array([0, 1, 1]),
                      circles=[{"x": 0.5, "y": 0.5, "radius": 0.1, "naive_radius": 0.2}]),
        pe.scalar_heatmap(xs, xs, np.ones((6, 6)), "t", "σ(x)", points=np.zeros((2, 2))),
        pe.training_curves([{"epoch": 1, "loss": 1.0, "noisy_train_accuracy": 0.5}]),
    ]


def test_image_grid_traces_titles_and_pixels():
    imgs = np.zeros((5, 1, 4, 4))
    imgs[0, 0, 0, 0] = 1.5  # noisy values are clipped for display
    imgs[1, 0, 0, 0] = -0.3
    imgs[2, 0, 1, 2] = 0.5
    fig = pe.image_grid(imgs, titles=[f"t{i}" for i in range(5)], cols=3, title="grid")
    assert [t.type for t in fig.data] == ["image"] * 5
    assert [a.text for a in fig.layout.annotations] == [f"t{i}" for i in range(5)]
    z0 = np.asarray(fig.data[0].z)
    assert z0.shape == (4, 4, 3) and z0.dtype == np.uint8
    assert tuple(z0[0, 0]) == (255, 255, 255)
    assert tuple(np.asarray(fig.data[1].z)[0, 0]) == (0, 0, 0)
    assert tuple(np.asarray(fig.data[2].z)[1, 2]) == (128, 128, 128)
    # 5 images in 3 columns: the fifth sits in row 2, column 2
    assert fig.data[4].xaxis == "x5" and fig.layout.title.text == "grid"


def test_image_grid_colour_images_keep_channels():
    img = np.zeros((1, 3, 2, 2))
    img[0, 0] = 1.0  # red channel
    z = np.asarray(pe.image_grid(img).data[0].z)
    assert tuple(z[0, 0]) == (255, 0, 0)


def test_image_grid_rejects_empty():
    with pytest.raises(ValueError):
        pe.image_grid(np.zeros((0, 1, 2, 2)))


def test_vote_histogram_bars_and_axes():
    counts = [5, 900, 95]
    fig = pe.vote_histogram(counts, ["zero", "one", "two"], predicted=1, label=2)
    (bar,) = fig.data
    assert bar.type == "bar" and list(bar.y) == counts and list(bar.x) == ["zero", "one", "two"]
    assert bar.marker.color[1] != bar.marker.color[0] and bar.marker.color[0] == bar.marker.color[2]
    assert fig.layout.xaxis.title.text == "class"
    assert "1,000" in fig.layout.yaxis.title.text
    assert any(a.text == "true label" and a.x == "two" for a in fig.layout.annotations)


def test_radius_bars_label_the_naive_radius():
    fig = pe.radius_bars(0.12, 0.31)
    (bar,) = fig.data
    assert list(bar.x) == [0.12, 0.31]
    assert "not a guarantee" in bar.y[1] and "sound" in bar.y[0]
    assert "L2 radius" in fig.layout.xaxis.title.text


def test_region_map_regions_points_and_circles():
    xs = np.linspace(0.0, 1.0, 4)
    ys = np.linspace(0.0, 2.0, 5)
    pred = np.zeros((5, 4), dtype=int)
    pred[:, 2:] = 1
    pred[0, 0] = -1
    pts = np.array([[0.1, 0.2], [0.8, 1.5], [0.7, 0.3]])
    circles = [{"x": 0.1, "y": 0.2, "radius": 0.05, "naive_radius": 0.08}, {"x": 0.8, "y": 1.5, "radius": 0.1}]
    fig = pe.region_map(xs, ys, pred, ["a", "b"], "Regions", points=pts, point_labels=np.array([0, 1, 1]),
                        point_ids=np.array([10, 11, 12]), circles=circles)
    heat = fig.data[0]
    assert heat.type == "heatmap"
    np.testing.assert_array_equal(np.asarray(heat.z), pred + 1)  # 0 = abstain
    assert list(heat.colorbar.ticktext) == ["abstain", "a", "b"]
    scatters = [t for t in fig.data if t.type == "scatter" and t.customdata is not None]
    assert sorted(int(c) for t in scatters for c in t.customdata) == [10, 11, 12]
    # each ring is a halo plus a line: (sound + naive) + sound = 3 rings, 6 shapes
    shapes = fig.layout.shapes
    assert len(shapes) == 6 and all(s.type == "circle" for s in shapes)
    widths = sorted({round(s.x1 - s.x0, 9) for s in shapes})
    assert widths == pytest.approx([0.1, 0.16, 0.2])  # diameters = 2 * radius
    dashed = [s for s in shapes if s.line.dash == "dash"]
    assert len(dashed) == 2 and all(s.x1 - s.x0 == pytest.approx(0.16) for s in dashed)
    assert fig.layout.xaxis.title.text.startswith("x₁") and fig.layout.yaxis.title.text.startswith("x₂")
    assert fig.layout.yaxis.scaleanchor == "x"  # circles stay round
    assert fig.layout.title.text == "Regions"


def test_region_map_skips_zero_radius():
    xs = np.linspace(0, 1, 3)
    fig = pe.region_map(xs, xs, np.zeros((3, 3), dtype=int), ["a"], "t", circles=[{"x": 0.5, "y": 0.5, "radius": 0.0}])
    assert len(fig.layout.shapes) == 0
    assert any(t.type == "scatter" and list(t.x) == [0.5] for t in fig.data)  # the point itself is marked


def test_scalar_heatmap_axes_and_colorbar():
    xs = np.linspace(0, 1, 3)
    vals = np.arange(9.0).reshape(3, 3)
    fig = pe.scalar_heatmap(xs, xs, vals, "sigma map", "σ(x)")
    assert fig.data[0].type == "heatmap" and fig.data[0].colorbar.title.text == "σ(x)"
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), vals)
    assert "input units" in fig.layout.xaxis.title.text


def test_scalar_heatmap_log_scale_keeps_values_for_hover_and_labels_sigma():
    xs = np.linspace(0, 1, 3)
    vals = np.array([[0.01, 0.02, 0.05], [0.1, 0.2, 0.5], [1.0, 2.0, 3.0]])
    heat = pe.scalar_heatmap(xs, xs, vals, "sigma map", "σ(x)", log_scale=True).data[0]
    np.testing.assert_allclose(np.asarray(heat.z), np.log10(vals))
    np.testing.assert_array_equal(np.asarray(heat.customdata), vals)  # the hover shows σ itself
    ticks = [float(t) for t in heat.colorbar.ticktext]
    assert ticks == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
    np.testing.assert_allclose(heat.colorbar.tickvals, np.log10(ticks))
    assert "log" in heat.colorbar.title.text


def test_log_ticks_label_a_nearly_constant_field():
    assert pe.log_ticks(0.1, 0.1) == [0.1]
    assert pe.log_ticks(0.11, 0.13) == [0.11, 0.13]
    with pytest.raises(ValueError):
        pe.log_ticks(0.0, 1.0)


def test_training_curves_have_integer_epoch_ticks_over_the_planned_epochs():
    resumed = [{"epoch": e, "loss": 1.0 / e, "noisy_train_accuracy": 0.1 * e} for e in (4, 5, 6)]
    fig = pe.training_curves(resumed, total_epochs=8)
    assert list(fig.data[0].x) == [4, 5, 6] and all(isinstance(x, int) for x in fig.data[0].x)
    axis = fig.layout.xaxis
    assert axis.tickmode == "linear" and axis.dtick == 1 and axis.tick0 == 0 and axis.tickformat == "d"
    assert axis.range == (0.5, 8.5)
    long = pe.training_curves([{"epoch": e, "loss": 1.0} for e in range(1, 301)])
    assert long.layout.xaxis.dtick == 50 and long.layout.xaxis.range == (0.5, 300.5)  # at most ten ticks


def test_training_curves_axes():
    hist = [
        {"epoch": 1, "loss": 2.0, "noisy_train_accuracy": 0.4},
        {"epoch": 2, "loss": 1.0, "noisy_train_accuracy": 0.7},
    ]
    fig = pe.training_curves(hist)
    names = [t.name for t in fig.data]
    assert names == ["training loss", "training accuracy under noise"]
    assert list(fig.data[1].y) == pytest.approx([40.0, 70.0])
    assert fig.layout.xaxis.title.text == "epoch"
    assert fig.layout.yaxis.title.text.startswith("loss") and fig.layout.yaxis2.title.text == "accuracy (%)"


def test_epoch_history_parses_train_log():
    log = (
        "training mlp on digits (1437 points) with sigma constant:0.25 for 3 epochs -> x.pt\n"
        "[#####-----] 5/36 batches (14%)  3.1 batches/s  ETA 0:00:10\n"
        "epoch 1/3: loss 2.1000, noisy train accuracy 0.2500\n"
        "epoch 2/3: loss 1.5000, noisy train accuracy 0.5000\n"
        "epoch 2/3: loss 1.4000, noisy train accuracy 0.5500\n"  # resumed: the later line wins
        "epoch 3/3: loss 9.5e-01, noisy train accuracy 0.7000\n"
    )
    hist = pe.epoch_history(log)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[1] == {"epoch": 2, "loss": 1.4, "noisy_train_accuracy": 0.55}
    assert hist[2]["loss"] == pytest.approx(0.95)
    assert pe.epoch_history("nothing here") == []


def test_no_webgl_traces_and_every_axis_titled():
    for fig in _all_figures():
        spec = json.loads(fig.to_json())
        assert all(t["type"] != "scattergl" for t in spec["data"])
        has_images = any(t["type"] == "image" for t in spec["data"])
        if not has_images:
            assert spec["layout"]["xaxis"]["title"]["text"]
            assert spec["layout"]["yaxis"]["title"]["text"]


def test_explore_modules_import_without_streamlit():
    code = ("import sys; sys.modules['streamlit'] = None; "
            "import smoothviz.plots_explore, smoothviz.explorer, smoothviz.playground; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
