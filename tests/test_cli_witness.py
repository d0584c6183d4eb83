"""The `witness` and `audit-sigma` verbs, through a real subprocess and in-process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from smoothviz import bounds
from smoothviz.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoothviz", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_witness_subprocess_prints_one_json_object() -> None:
    res = _cli("witness", "--dim", "3072", "--sigma0", "0.25", "--pa", "0.999", "--sigma1", "0.26",
               "--distance", "0.386")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    r = math.log(0.26 / 0.25) / 0.386
    assert out["r"] == pytest.approx(r, rel=1e-12) and out["r_implied"] is True and out["admissible"] is True
    assert out["naive_radius"] == pytest.approx(float(bounds.naive_radius(0.999, 0.25)), rel=1e-12)
    assert out["sound_radius"] == pytest.approx(float(bounds.input_dependent_radius(0.999, 0.25, r, 3072)),
                                                rel=1e-12)
    assert out["worst_case_probability"] == pytest.approx(
        float(bounds.worst_case_probability(0.25, 0.26, 0.386, 0.999, 3072)), abs=1e-15)
    assert out["sound_radius"] < 0.386 < out["naive_radius"] and out["worst_case_probability"] < 0.5
    assert out["broken"] is True and out["region"] == "ball" and out["naive_is_not_a_guarantee"] is True
    assert "verify" not in out


def test_witness_with_verify_in_process(capsys: pytest.CaptureFixture[str], one_thread) -> None:
    argv = ["witness", "--dim", "784", "--sigma0", "0.25", "--pa", "0.999", "--sigma1", "0.23",
            "--distance", "0.3", "--verify", "4000", "--alpha", "0.001", "--seed", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    v = out["verify"]
    assert out["broken"] is True and out["region"] == "complement"
    assert v["n"] == 4000 and sum(v["x0"]["counts"]) == 4000 and sum(v["x1"]["counts"]) == 4000
    lo, hi = v["x1"]["interval"]
    assert v["x1"]["p_a_upper"] < 0.5 and lo <= out["worst_case_probability"] <= hi
    assert v["x0"]["interval"][0] <= 0.999 <= v["x0"]["interval"][1]
    assert v["x0"]["predict"] == 0 and v["x0"]["naive_radius_issued"] > 0.3
    assert v["confirmed"] is True and v["issued_covers_x1"] is True and v["x1_not_a"] is True
    assert main(argv) == 0  # same seed, same counts
    again = json.loads(capsys.readouterr().out)["verify"]
    assert (again["x0"]["counts"], again["x1"]["counts"]) == (v["x0"]["counts"], v["x1"]["counts"])


def test_witness_with_a_given_r(capsys: pytest.CaptureFixture[str]) -> None:
    # r = 0.05 does not allow sigma1/sigma0 = 1.04 at d = 0.386: the pair is not admissible for it
    assert main(["witness", "--dim", "3072", "--sigma0", "0.25", "--pa", "0.999", "--sigma1", "0.26",
                 "--distance", "0.386", "--r", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["r"] == 0.05 and out["r_implied"] is False and out["admissible"] is False
    assert out["sound_radius"] == pytest.approx(float(bounds.input_dependent_radius(0.999, 0.25, 0.05, 3072)),
                                                rel=1e-12)
    # a constant sigma: never broken inside the naive radius
    assert main(["witness", "--dim", "64", "--sigma0", "0.25", "--pa", "0.99", "--sigma1", "0.25",
                 "--distance", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["r"] == 0.0 and out["broken"] is False and out["sound_radius"] == pytest.approx(out["naive_radius"])


BAD = [
    (["witness", "--dim", "0", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "1"], "--dim"),
    (["witness", "--dim", "3", "--sigma0", "0", "--pa", "0.9", "--sigma1", "1", "--distance", "1"], "--sigma0"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "1", "--sigma1", "1", "--distance", "1"], "--pa"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "-1", "--distance", "1"], "--sigma1"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "nan"], "--distance"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "1", "--r", "-1"],
     "--r"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "1", "--verify",
      "0"], "--verify"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "1", "--seed",
      "-3"], "--seed"),
    (["audit-sigma", "--sigma", "knn:0.25,0.4,20", "--declared-r", "-1"], "--declared-r"),
    (["audit-sigma", "--sigma", "knn:0.25,0.4,20", "--points", "0"], "--points"),
]


@pytest.mark.parametrize("argv,name", BAD)
def test_bad_arguments_exit_2_naming_the_argument(argv: list[str], name: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


LIBRARY_ERRORS = [
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "2", "--distance", "0"], "distance"),
    (["witness", "--dim", "3", "--sigma0", "1", "--pa", "0.9", "--sigma1", "1", "--distance", "1", "--verify",
      "10", "--n0", "20"], "--n0"),
    (["audit-sigma", "--sigma", "gauss:0.25"], "gauss"),
    (["audit-sigma", "--sigma", "ddrs:0.05,1,10"], "--model"),
    (["audit-sigma", "--sigma", "ddrs:0.05,1"], "ddrs"),
    (["audit-sigma", "--sigma", "constant:0.25", "--model", "assets/digits-cnn-constant-0.25.pt"], "--model"),
]


@pytest.mark.parametrize("argv,word", LIBRARY_ERRORS)
def test_invalid_combinations_exit_2_with_one_line(argv: list[str], word: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert word in err and err.startswith(f"smoothviz {argv[0]}: error:") and len(err.strip().splitlines()) == 1


def test_audit_sigma_flags_a_halved_r(capsys: pytest.CaptureFixture[str], one_thread) -> None:
    assert main(["audit-sigma", "--dataset", "digits", "--sigma", "knn:0.25,0.4,20", "--declared-r", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] is True and out["declared_r"] == 0.2 and 0.2 < out["audited_r"] <= 0.4
    assert out["audited_r_is_a_lower_bound"] is True and out["dim"] == 64
    assert out["pair"]["distance"] > 0 and out["pair"]["method"] in out["by_method"]
    assert main(["audit-sigma", "--sigma", "knn:0.25,0.4,20"]) == 0  # the spec's own r: consistent
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] is False and out["declared_r"] == 0.4 and out["audited_r"] <= 0.4


def test_help_names_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    for verb, args in (("witness", ["--dim", "--sigma0", "--pa", "--sigma1", "--distance", "--r", "--verify",
                                    "--alpha", "--seed", "--run", "--db", "--examples"]),
                       ("audit-sigma", ["--dataset", "--sigma", "--declared-r", "--model", "--points"])):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for a in args:
            assert a in text
    with pytest.raises(SystemExit):
        main(["witness", "--help"])
    assert "NOT a guarantee" in capsys.readouterr().out


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """A store with the shipped example runs, a 30-point cut of the digits kNN run and a ddrs run."""
    import torch

    from smoothviz import certify
    from smoothviz.examples import load_examples
    from smoothviz.store import Store

    db = tmp_path_factory.mktemp("cliwd") / "s.db"
    store = Store(db)
    ids = load_examples(store)
    knn = next(i for i in ids if store.run(i)["sigma_spec"].startswith("knn") and store.run(i)["dataset"] == "digits")
    run = store.run(knn)
    rows = store.results(knn).head(30)
    cut = store.create_run("digits knn head", "digits", "test", run["checkpoint"], run["sigma_spec"],
                           run["sigma_params"], run["r"], run["n0"], run["n"], run["alpha"], "cpu",
                           rows["idx"].tolist(), 0, 256)
    for row in rows.to_dict("records"):
        store.add_result(cut, row)
    store.set_status(cut, "done")
    ddrs = store.create_run("digits ddrs", "digits", "test", str(ROOT / "assets" / "digits-cnn-constant-0.25.pt"),
                            "ddrs:0.12,0.5,3,n=32", {}, None, 20, 500, 0.01, "cpu", list(range(6)), 0, 256)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        certify.run_certification(store, ddrs)
    finally:
        torch.set_num_threads(before)
    constant = next(i for i in ids if store.run(i)["sigma_spec"].startswith("constant"))
    store.close()
    return db, {"knn": cut, "ddrs": ddrs, "constant": constant}


def test_witness_run_counts_refuted_certificates(run_store, capsys: pytest.CaptureFixture[str], one_thread) -> None:
    db, ids = run_store
    assert main(["witness", "--run", str(ids["knn"]), "--db", str(db), "--verify", "10000", "--examples", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == ids["knn"] and out["dim"] == 64 and out["declared_r"] == 0.4
    assert out["certificate"] == "sound and naive" and out["points"] == 30
    assert 0 < out["refuted_and_verified"] <= out["refuted_by_data_pair"] <= out["naive_exceeds_sound"] \
        <= out["examined"] <= 30
    assert out["verify_n"] == 10000 and 0 < len(out["examples"]) <= 3
    for e in out["examples"]:
        assert e["sound_radius"] < e["distance"] < e["naive_radius"] and e["worst_case_probability"] < 0.5
        assert e["worst_case_probability"] == pytest.approx(float(bounds.worst_case_probability(
            e["sigma0"], e["sigma1"], e["distance"], e["p_a"], 64)), abs=1e-12)
    assert any(e.get("verify", {}).get("confirmed") for e in out["examples"])
    assert main(["witness", "--run", str(ids["constant"]), "--db", str(db), "--examples", "0"]) == 0
    flat = json.loads(capsys.readouterr().out)
    assert flat["naive_exceeds_sound"] == 0 and flat["refuted_by_data_pair"] == 0 and flat["examples"] == []


def test_witness_run_on_a_ddrs_run_is_naive_only(run_store, capsys: pytest.CaptureFixture[str], one_thread) -> None:
    db, _ = run_store
    assert main(["witness", "--run", "digits ddrs", "--db", str(db)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["certificate"] == "naive only (no guarantee)" and out["declared_r"] is None
    assert out["naive_exceeds_sound"] == out["examined"] > 0  # sound radius 0: every naive radius exceeds it
    assert out["candidates"]["ascent"] == 0 and out["searched"] == out["naive_exceeds_sound"]  # ddrs: no gradient


RUN_ERRORS = [
    (["witness", "--run", "1", "--dim", "3"], "--dim"),
    (["witness", "--sigma0", "0.25"], "--dim"),
    (["witness", "--run", "987654"], "987654"),
]


@pytest.mark.parametrize("argv,word", RUN_ERRORS)
def test_run_mode_errors_are_one_line(run_store, argv: list[str], word: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = run_store
    assert main([*argv, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert word in err and err.startswith("smoothviz witness: error:") and len(err.strip().splitlines()) == 1


def test_audit_sigma_run_records_and_table_warns(run_store, capsys: pytest.CaptureFixture[str], one_thread) -> None:
    """The audit of a run is stored with it; a run whose recorded r is below the audit gets a warning in
    ``table`` (text and JSON); a run whose r holds gets none; a naive-only run is labelled as such."""
    from smoothviz.store import Store

    db, ids = run_store
    with Store(db) as store:
        run = store.run(ids["knn"])
        rows = store.results(ids["knn"])
        # the same kNN sigma (r = 0.4), recorded as if its r were 0.2: certificates computed for too small an r
        low = store.create_run("digits knn r too small", "digits", "test", run["checkpoint"], run["sigma_spec"],
                               run["sigma_params"], 0.2, run["n0"], run["n"], run["alpha"], "cpu",
                               rows["idx"].tolist(), 0, 256)
        for row in rows.to_dict("records"):
            store.add_result(low, row)
    assert main(["audit-sigma", "--run", str(low), "--db", str(db), "--points", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == low and out["recorded"] is True and out["declared_r"] == 0.2
    assert 0.2 < out["audited_r"] <= 0.4 and out["flagged"] is True and "exceeds the r = 0.2" in out["warning"]
    assert main(["audit-sigma", "--run", str(ids["knn"]), "--db", str(db), "--points", "30"]) == 0
    fine = json.loads(capsys.readouterr().out)
    assert fine["declared_r"] == 0.4 and fine["audited_r"] <= 0.4 and fine["warning"] is None
    with Store(db) as store:
        assert store.run(low)["options"]["sigma_audit"]["audited_r"] == out["audited_r"]
    assert main(["table", str(low), str(ids["knn"]), "--db", str(db), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert "exceeds the r = 0.2" in reports[0]["warning"] and reports[1]["warning"] is None
    assert reports[0]["sigma_audit"]["audited_r"] == out["audited_r"]
    assert main(["table", str(low), str(ids["knn"]), str(ids["ddrs"]), "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert f"warning: run {low}: the audited semi-elasticity" in text
    assert f"warning: run {ids['knn']}" not in text
    assert f"run {ids['ddrs']}: naive only (no guarantee)" in text


def test_audit_sigma_run_refuses_spec_arguments(run_store, capsys: pytest.CaptureFixture[str]) -> None:
    db, ids = run_store
    assert main(["audit-sigma", "--run", str(ids["knn"]), "--db", str(db), "--sigma", "constant:0.25"]) == 2
    err = capsys.readouterr().err
    assert "--sigma" in err and len(err.strip().splitlines()) == 1
    assert main(["audit-sigma", "--dataset", "digits"]) == 2
    assert "--sigma is required" in capsys.readouterr().err


def test_certify_with_a_ddrs_sigma_records_no_r(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                one_thread) -> None:
    """``certify --sigma ddrs:...`` end to end: the run's r is NULL, every sound radius 0, the naive radius
    sigma(x) Phi^-1(p_A) stored, and the summary says the certificate is naive only."""
    from scipy import special

    from smoothviz.store import Store

    db = tmp_path / "s.db"
    assert main(["certify", "--dataset", "digits", "--model", str(ROOT / "assets" / "digits-cnn-constant-0.25.pt"),
                 "--sigma", "ddrs:0.12,0.5,3,n=32", "--points", "6", "--n0", "20", "--n", "500", "--db", str(db),
                 "--quiet"]) == 0
    assert "naive only (no guarantee)" in capsys.readouterr().out
    with Store(db) as store:
        run = store.run(1)
        df = store.results(1)
    assert run["r"] is None and run["sigma_spec"] == "ddrs:0.12,0.5,3,n=32,alpha=0.001,seed=0"
    assert len(df) == 6 and (df["radius"] == 0).all()
    certified = df["predict"] >= 0
    assert certified.any()
    naive = df["sigma"] * special.ndtri(df["p_a_lower"])
    assert (df.loc[certified, "naive_radius"] - naive[certified]).abs().max() < 1e-9
