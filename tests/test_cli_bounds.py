"""The `bound` and `radius` verbs, through a real subprocess and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from smoothviz import bounds
from smoothviz.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoothviz", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bound_subprocess_prints_one_json_object() -> None:
    res = _cli("bound", "--sigma0", "0.25", "--sigma1", "0.26", "--distance", "0.1", "--pa",
               "0.9", "--dim", "3072")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["bound"]
    assert out["bound"] == pytest.approx(
        float(bounds.worst_case_probability(0.25, 0.26, 0.1, 0.9, 3072)), abs=1e-15)
    assert 0 < out["bound"] < stats.norm.cdf(stats.norm.ppf(0.9) - 0.4)


def test_radius_subprocess_with_naive() -> None:
    res = _cli("radius", "--pa", "0.9", "--sigma0", "0.25", "--r", "0.1", "--dim", "3072",
               "--naive")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["radius"] == pytest.approx(
        float(bounds.input_dependent_radius(0.9, 0.25, 0.1, 3072)), rel=1e-12)
    assert out["naive_radius"] == pytest.approx(0.25 * stats.norm.ppf(0.9), rel=1e-12)
    assert out["naive_is_not_a_guarantee"] is True
    assert out["radius"] < out["naive_radius"]


def test_in_process_matches_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["radius", "--pa", "0.99", "--sigma0", "0.5", "--r", "0", "--dim", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"radius": pytest.approx(0.5 * stats.norm.ppf(0.99), rel=1e-12)}
    assert main(["radius", "--pa", "0.4", "--sigma0", "0.5", "--r", "0.1", "--dim", "10",
                 "--naive"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["radius"] == 0.0 and out["naive_radius"] == 0.0  # abstain
    assert main(["bound", "--sigma0", "1", "--sigma1", "1", "--distance", "0.5", "--pa", "0.8",
                 "--dim", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bound"] == pytest.approx(stats.norm.cdf(stats.norm.ppf(0.8) - 0.5), abs=1e-15)


BAD = [
    (["bound", "--sigma0", "0", "--sigma1", "1", "--distance", "1", "--pa", "0.9", "--dim", "3"],
     "--sigma0"),
    (["bound", "--sigma0", "1", "--sigma1", "-2", "--distance", "1", "--pa", "0.9", "--dim", "3"],
     "--sigma1"),
    (["bound", "--sigma0", "1", "--sigma1", "1", "--distance", "-1", "--pa", "0.9", "--dim", "3"],
     "--distance"),
    (["bound", "--sigma0", "1", "--sigma1", "1", "--distance", "1", "--pa", "0", "--dim", "3"],
     "--pa"),
    (["bound", "--sigma0", "1", "--sigma1", "1", "--distance", "nan", "--pa", "0.9", "--dim",
      "3"], "--distance"),
    (["radius", "--pa", "1.01", "--sigma0", "1", "--r", "0.1", "--dim", "3"], "--pa"),
    (["radius", "--pa", "nan", "--sigma0", "1", "--r", "0.1", "--dim", "3"], "--pa"),
    (["radius", "--pa", "0.9", "--sigma0", "1", "--r", "-0.1", "--dim", "3"], "--r"),
    (["radius", "--pa", "0.9", "--sigma0", "1", "--r", "0.1", "--dim", "0"], "--dim"),
    (["radius", "--pa", "0.9", "--sigma0", "inf", "--r", "0.1", "--dim", "3"], "--sigma0"),
]


@pytest.mark.parametrize("argv,name", BAD)
def test_bad_input_exits_2_naming_the_argument(argv: list[str], name: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


def test_bad_input_subprocess_has_no_traceback() -> None:
    res = _cli("radius", "--pa", "1.5", "--sigma0", "1", "--r", "0.1", "--dim", "3")
    assert res.returncode == 2
    assert "--pa" in res.stderr and "Traceback" not in res.stderr and res.stdout == ""


def test_help_explains_each_argument(capsys: pytest.CaptureFixture[str]) -> None:
    for verb, args in (("bound", ["--sigma0", "--sigma1", "--distance", "--pa", "--dim"]),
                       ("radius", ["--pa", "--sigma0", "--r", "--dim", "--naive"])):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for a in args:
            assert a in text
        if verb == "radius":
            assert "NOT a guarantee" in text
