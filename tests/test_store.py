"""Results store: schema round trip, resume identity, concurrency, corrupt files, Cohen logs."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from smoothviz.errors import InvalidArgument, LogFormatError, StoreError
from smoothviz.store import (
    Store,
    export_cohen_log,
    export_csv,
    import_cohen_log,
    parse_log_time,
    read_cohen_log,
)

CONFIG = dict(
    name="demo", dataset="digits", split="test", checkpoint=None, sigma_spec="constant:0.25",
    sigma_params={"kind": "constant", "sigma": 0.25}, r=0.0, n0=100, n=1000, alpha=0.001,
    device="cpu", indices=[3, 1, 4, 5, 9], seed=0, batch_size=512,
)


RESULT_COLUMNS_EXPECTED = ["idx", "label", "predict", "correct", "p_a_lower", "sigma", "radius",
                           "naive_radius", "counts", "seconds"]


def _result(idx: int, **kw) -> dict:
    base = dict(idx=idx, label=idx % 10, predict=idx % 10, correct=True, p_a_lower=0.9,
                sigma=0.25, radius=0.3 + idx / 100, naive_radius=0.31, counts=[1, 2, 997],
                seconds=0.5)
    base.update(kw)
    return base


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "test.db")
    yield s
    s.close()


def test_round_trip_and_duplicates_ignored(store: Store) -> None:
    run_id = store.create_run(**CONFIG)
    store.add_result(run_id, _result(4))
    store.add_result(run_id, _result(1, predict=-1, correct=False, radius=0.0))
    store.add_result(run_id, _result(4, radius=99.0))  # a resumed run re-submitting a point
    df = store.results(run_id)
    assert df["idx"].tolist() == [1, 4]
    assert df.loc[df.idx == 4, "radius"].item() == pytest.approx(0.34)  # first write kept
    assert df["correct"].tolist() == [False, True]
    assert df["counts"].iloc[0] == [1, 2, 997]
    assert store.done_indices(run_id) == {1, 4}
    info = store.run(run_id)
    assert info["indices"] == [3, 1, 4, 5, 9] and info["total"] == 5 and info["done"] == 2
    assert info["sigma_params"] == {"kind": "constant", "sigma": 0.25}
    assert info["status"] == "pending"
    listing = store.runs()
    assert listing.loc[0, "done"] == 2 and listing.loc[0, "total"] == 5


def test_find_run_requires_identical_config(store: Store) -> None:
    run_id = store.create_run(**CONFIG)
    assert store.find_run(**CONFIG) == run_id
    assert store.find_run(**{**CONFIG, "batch_size": 4096}) == run_id  # batch size not in identity
    assert store.find_run(**{**CONFIG, "device": "cuda:0"}) is None
    assert store.find_run(**{**CONFIG, "seed": 1}) is None
    assert store.find_run(**{**CONFIG, "indices": [3, 1, 4]}) is None
    assert store.find_run(**{**CONFIG, "alpha": 0.01}) is None
    assert store.find_run(**{**CONFIG, "options": {"autocast": "bf16"}}) is None


def test_resolve_run_by_id_and_name(store: Store) -> None:
    a = store.create_run(**CONFIG)
    b = store.create_run(**{**CONFIG, "name": "other"})
    store.create_run(**{**CONFIG, "name": "other"})
    assert store.resolve_run(str(a)) == a
    assert store.resolve_run("demo") == a
    with pytest.raises(StoreError, match="matches runs"):
        store.resolve_run("other")
    with pytest.raises(StoreError, match="no run"):
        store.resolve_run("nope")
    store.delete_run(b)
    assert store.resolve_run("other") == b + 1
    with pytest.raises(StoreError, match="not found"):
        store.run(b)


def test_status_cancel_and_progress(store: Store) -> None:
    run_id = store.create_run(**CONFIG)
    assert not store.cancel_requested(run_id)
    store.request_cancel(run_id)
    assert store.cancel_requested(run_id)
    store.set_status(run_id, "running")  # a (re)start clears the flag
    assert not store.cancel_requested(run_id)
    for i in (3, 1):
        store.add_result(run_id, _result(i))
    p = store.progress(run_id)
    assert (p["done"], p["total"], p["status"]) == (2, 5, "running")
    assert p["rate_per_s"] > 0 and p["eta_s"] == pytest.approx(3 / p["rate_per_s"])
    with pytest.raises(InvalidArgument):
        store.set_status(run_id, "bogus")


def test_running_run_of_dead_process_shows_interrupted(store: Store) -> None:
    run_id = store.create_run(**CONFIG)
    store.set_status(run_id, "running")
    assert store.run(run_id)["status"] == "running"  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(store.path) as c:
        c.execute("UPDATE runs SET pid=? WHERE id=?", (dead.pid, run_id))
    assert store.run(run_id)["status"] == "interrupted"
    assert store.runs().loc[0, "status"] == "interrupted"


def test_corrupt_database_is_a_one_line_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_foreign_sqlite_database_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, colour TEXT)")
    with pytest.raises(StoreError, match="not a smoothviz database"):
        Store(path)


def test_directory_as_database_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)


_WRITER = textwrap.dedent(
    """
    import sys
    from smoothviz.store import Store
    path, run_a, run_b, offset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = Store(path)
    for i in range(150):
        s.add_result(run_a, dict(idx=i, label=0, predict=0, correct=True, p_a_lower=0.9, sigma=0.25,
                                 radius=0.1, naive_radius=0.1, counts=[5, 5], seconds=0.0))
        s.add_result(run_b, dict(idx=offset + i, label=1, predict=1, correct=True, p_a_lower=0.9,
                                 sigma=0.25, radius=0.2, naive_radius=0.2, counts=[1], seconds=0.0))
        s.progress(run_a)
    print("ok")
    """
)


def test_two_processes_writing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with Store(path) as s:
        shared = s.create_run(**{**CONFIG, "indices": list(range(150))})
        own = s.create_run(**{**CONFIG, "indices": list(range(300)), "name": "own"})
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(shared), str(own), str(off)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for off in (0, 150)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    with Store(path) as s:
        assert s.integrity_check() == "ok"
        assert sorted(s.done_indices(shared)) == list(range(150))  # both wrote them: no duplicates
        assert sorted(s.done_indices(own)) == list(range(300))
        assert len(s.results(own)) == 300


# ------------------------------------------------------------------------- Cohen log format
COHEN_LOG = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t3\t0.512\t1\t0:00:01.250000\n"
    "20\t8\t-1\t0.0\t0\t0:00:02.5\n"
    "40\t0\t1\t0.1\t0\t3.75\n"
    "60\t5\t5\t1.25\t1\t1 day, 0:00:01\n"
)


def test_parse_log_time() -> None:
    assert parse_log_time("0:00:01.250000") == pytest.approx(1.25)
    assert parse_log_time("1:02:03") == 3723
    assert parse_log_time("2 days, 0:00:00.5") == pytest.approx(172800.5)
    assert parse_log_time("12.5") == 12.5
    for bad in ("abc", "-1", "0:60:00", "nan"):
        with pytest.raises(ValueError):
            parse_log_time(bad)


def test_import_cohen_log(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "cohen.tsv"
    log.write_text(COHEN_LOG)
    run_id = import_cohen_log(store, log, name="paper", dataset="cifar10", sigma="0.5")
    info = store.run(run_id)
    assert info["kind"] == "import" and info["status"] == "done" and info["sigma_spec"] == "constant:0.5"
    df = store.results(run_id)
    assert df["idx"].tolist() == [0, 20, 40, 60]
    assert df["predict"].tolist() == [3, -1, 1, 5]
    assert df["correct"].tolist() == [True, False, False, True]
    assert df["radius"].tolist() == [0.512, 0.0, 0.1, 1.25]
    assert df["seconds"].tolist() == pytest.approx([1.25, 2.5, 3.75, 86401.0])
    assert df["sigma"].tolist() == [0.5] * 4


def test_cohen_and_csv_export_round_trip(store: Store, tmp_path: Path) -> None:
    run_id = store.create_run(**CONFIG)
    originals = [_result(3, radius=0.123456789012345, seconds=1.5),
                 _result(5, predict=-1, correct=False, radius=0.0, seconds=3723.25)]
    for r in originals:
        store.add_result(run_id, r)
    out = tmp_path / "exported.tsv"
    export_cohen_log(store, run_id, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert lines[2].endswith("\t1:02:03.250000")
    back = read_cohen_log(out)
    assert back["radius"].tolist() == [0.123456789012345, 0.0]  # lossless
    assert back["seconds"].tolist() == pytest.approx([1.5, 3723.25])
    assert back["predict"].tolist() == [3, -1]
    buf = io.StringIO()
    export_csv(store, run_id, buf)
    csv = pd.read_csv(io.StringIO(buf.getvalue()))
    assert csv.columns.tolist() == ["idx", "label", "predict", "correct", "p_a_lower", "sigma",
                                    "radius", "naive_radius", "counts", "seconds"]
    assert json.loads(csv["counts"][0]) == [1, 2, 997]
    assert csv["radius"].tolist() == [0.123456789012345, 0.0]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "header"),
        ("idx label predict radius correct time\n0\t1\t1\t0.5\t1\t1.0\n", 1, "header"),
        (COHEN_LOG + "80\t1\t1\t0.5\t1\n", 6, "6 tab-separated"),
        (COHEN_LOG + "80\t1\tone\t0.5\t1\t1.0\n", 6, "one"),
        (COHEN_LOG + "80\t1\t1\t-0.5\t1\t1.0\n", 6, "radius"),
        (COHEN_LOG + "80\t1\t1\t0.5\t2\t1.0\n", 6, "correct"),
        (COHEN_LOG + "80\t1\t1\t0.5\t1\tyesterday\n", 6, "yesterday"),
        (COHEN_LOG + "20\t1\t1\t0.5\t1\t1.0\n", 6, "twice"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n", 1, "no result lines"),
    ],
)
def test_malformed_log_names_the_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(LogFormatError) as info:
        read_cohen_log(path)
    message = str(info.value)
    assert "\n" not in message and fragment in message
    if fragment != "no result lines":
        assert f"line {line}:" in message


def test_binary_log_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(LogFormatError, match="cannot read"):
        read_cohen_log(path)


# ------------------------------------------------------------------------------------------------ robustness
def test_pid_alive_takes_any_value() -> None:
    from smoothviz.processes import pid_alive

    me = os.getpid()
    assert pid_alive(me) and pid_alive(float(me))  # a float column from pandas still works
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    for value in (None, float("nan"), me + 0.5, 0, -1, -me, 2**80, "123", b"1", True, [me]):
        assert pid_alive(value) is False, value  # 0 and negatives would signal process groups


def test_runs_keep_integer_settings_with_an_imported_and_a_running_run(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "cohen.tsv"
    log.write_text(COHEN_LOG)
    imported = import_cohen_log(store, log, name="paper", dataset="cifar10", sigma="0.5")
    running = store.create_run(**CONFIG)
    store.set_status(running, "running")  # this live process, on this host
    frame = store.runs().set_index("id")
    assert frame.loc[running, "status"] == "running" and frame.loc[imported, "status"] == "done"
    for col in ("n0", "n", "seed", "batch_size"):
        assert frame[col].dtype == object
    assert frame.loc[imported, "n0"] is None and frame.loc[imported, "n"] is None
    assert type(frame.loc[running, "n0"]) is int and frame.loc[running, "n0"] == 100
    assert store.run(imported)["n0"] is None and store.run(imported)["alpha"] is None


def test_rename_run(store: Store) -> None:
    from smoothviz.errors import RunNameTaken

    a = store.create_run(**CONFIG)
    b = store.create_run(**{**CONFIG, "name": "other"})
    assert store.rename_run(a, "  fresh name ") == "fresh name"
    assert store.run(a)["name"] == "fresh name" and store.resolve_run("fresh name") == a
    with pytest.raises(RunNameTaken) as info:
        store.rename_run(b, "fresh name")
    assert info.value.run_id == a and "run " + str(a) in str(info.value)
    for bad, fragment in (("", "empty"), ("\t", "empty"), ("x" * 121, "longer than 120"), ("a\x00b", r"U\+0000"),
                          ("12", "number"), (None, "text")):
        with pytest.raises(InvalidArgument, match=fragment):
            store.rename_run(b, bad)
    with pytest.raises(StoreError, match="not found"):
        store.rename_run(999, "anything")
    assert store.run(b)["name"] == "other"


def test_delete_run_refuses_an_executing_run(store: Store) -> None:
    from smoothviz.errors import RunBusy

    run_id = store.create_run(**CONFIG)
    store.add_result(run_id, _result(3))
    store.set_status(run_id, "running")  # executed by this (live) process
    assert store.executing(run_id)
    with pytest.raises(RunBusy) as info:
        store.delete_run(run_id)
    assert info.value.run_id == run_id and f"process {os.getpid()}" in str(info.value)
    assert store.done_indices(run_id) == {3}
    store.set_status(run_id, "cancelled")
    assert not store.executing(run_id)
    store.delete_run(run_id)
    assert store.runs().empty and store._query("SELECT COUNT(*) FROM results") == [(0,)]
    forced = store.create_run(**CONFIG)
    store.set_status(forced, "running")
    store.delete_run(forced, force=True)
    with pytest.raises(StoreError, match="not found"):
        store.delete_run(forced)


def test_reading_never_creates_or_alters_a_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store"):
        Store(tmp_path / "none.db", create=False)
    with pytest.raises(StoreError, match="folder"):
        Store(tmp_path / "no" / "dir.db")  # not the default location: no folders made
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="empty file"):
        Store(empty, create=False)
    assert empty.read_bytes() == b""
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
    before = foreign.read_bytes()
    for create in (False, True):
        with pytest.raises(StoreError, match="not a smoothviz database"):
            Store(foreign, create=create)
    assert foreign.read_bytes() == before


def test_log_sources_path_bytes_and_file_objects(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(COHEN_LOG)
    want = read_cohen_log(path)
    crlf = ("\ufeff" + COHEN_LOG).replace("\n", "\r\n").encode()  # a BOM and Windows line ends
    for source in (COHEN_LOG.encode(), io.BytesIO(COHEN_LOG.encode()), io.StringIO(COHEN_LOG), crlf):
        got = read_cohen_log(source, source_name="upload.tsv")
        pd.testing.assert_frame_equal(got, want)
    with pytest.raises(LogFormatError, match=r"^upload\.tsv: line 6: "):
        read_cohen_log(io.BytesIO((COHEN_LOG + "9\t1\t2\t0.1\t1\t1.0\n").encode()), source_name="upload.tsv")


def test_import_is_one_transaction_and_checks_inside_it(tmp_path: Path) -> None:
    """Two imports of one file at once: exactly one run results (the checks run inside the write lock)."""
    import threading

    from smoothviz.errors import DuplicateImport

    db = tmp_path / "race.db"
    Store(db).close()
    data = COHEN_LOG.encode()
    outcomes: list[object] = []

    def importer(name: str) -> None:
        with Store(db) as s:
            try:
                outcomes.append(import_cohen_log(s, data, name, "digits", num_classes=10))
            except DuplicateImport as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=importer, args=(f"copy {i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [o for o in outcomes if isinstance(o, int)]
    assert len(ids) == 1 and sum(isinstance(o, DuplicateImport) for o in outcomes) == 3
    assert {o.run_id for o in outcomes if isinstance(o, DuplicateImport)} == set(ids)
    with Store(db) as s:
        assert len(s.runs()) == 1 and len(s.results(ids[0])) == 4
        info = s.run(ids[0])
        assert info["status"] == "done" and info["finished"] is not None and info["total"] == 4
        assert len(info["options"]["sha256"]) == 64


def test_long_times_survive_export_and_import(store: Store, tmp_path: Path) -> None:
    run_id = store.create_run(**CONFIG)
    store.add_result(run_id, _result(3, seconds=123456789.25))
    out = tmp_path / "long.tsv"
    export_cohen_log(store, run_id, out)
    assert out.read_text().splitlines()[1].endswith("\t1428 days, 21:33:09.250000")
    assert read_cohen_log(out)["seconds"].tolist() == [123456789.25]


# ------------------------------------------------------------------------------------------------
# sequential runs: side tables, created on first use

SEQUENTIAL = {"mode": "fixed-radius", "method": "mixture", "radius": 0.25, "max_radius": None,
              "tolerance": 0.0, "first": 16, "growth": 1.25, "prior": [0.5, 0.5, 0.5]}


def _sequential_result(idx: int, **kw) -> dict:
    base = _result(idx, counts=[1, 2, 397])
    base.update(samples=400, selection=100, class_a=2, votes_a=397, p_a_upper=0.999,
                stop_reason="certified", checkpoints=9)
    base.update(kw)
    return base


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_sequential_runs_live_in_side_tables_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        fixed = store.create_run(**CONFIG)
        store.add_result(fixed, _result(3))
    assert "sequential_runs" not in _tables(path)  # a store without sequential runs is as before
    before = path.read_bytes()
    with Store(path, create=False) as store:  # reading such a store changes nothing
        assert store.run(fixed)["sequential"] is None and store.runs()["mode"].tolist() == ["fixed-n"]
        assert store.results(fixed).columns.tolist() == RESULT_COLUMNS_EXPECTED
        assert store.sample_counts(fixed) == [1100]
    assert path.read_bytes() == before
    with Store(path) as store:
        seq = store.create_run(**{**CONFIG, "name": "seq"}, sequential=SEQUENTIAL)
        store.add_result(seq, _sequential_result(4))
        store.add_result(seq, _sequential_result(1, predict=-1, correct=False, radius=0.0, samples=16,
                                                 counts=[0, 9, 7], class_a=1, votes_a=9,
                                                 stop_reason="below-target", checkpoints=1))
        store.add_result(seq, _sequential_result(4, samples=1))  # a resumed run re-submitting a point
        assert store.run(seq)["sequential"] == SEQUENTIAL
        frame = store.runs().set_index("id")
        assert frame.loc[seq, "mode"] == "fixed-radius" and frame.loc[fixed, "mode"] == "fixed-n"
        df = store.results(seq)
        assert df.columns.tolist() == RESULT_COLUMNS_EXPECTED + [
            "samples", "selection", "class_a", "votes_a", "p_a_upper", "stop_reason", "checkpoints"]
        assert df["samples"].tolist() == [16, 400] and df["stop_reason"].tolist() == ["below-target", "certified"]
        assert df["class_a"].tolist() == [1, 2] and df["p_a_upper"].tolist() == [0.999, 0.999]
        assert store.sample_counts(seq) == [116, 500]
        assert store.results(fixed).columns.tolist() == RESULT_COLUMNS_EXPECTED  # fixed runs keep their rows
        with pytest.raises(InvalidArgument, match="not a sequential run"):
            store.add_result(fixed, _sequential_result(9))
        with pytest.raises(InvalidArgument, match="lacks"):
            store.add_result(seq, {k: v for k, v in _sequential_result(9).items() if k != "checkpoints"})
        assert store.done_indices(seq) == {1, 4}  # refused results left nothing behind
        buf = io.StringIO()
        export_csv(store, seq, buf)
        csv = pd.read_csv(io.StringIO(buf.getvalue()))
        assert csv["stop_reason"].tolist() == ["below-target", "certified"] and csv["samples"].tolist() == [16, 400]
        log = tmp_path / "seq.tsv"
        export_cohen_log(store, seq, log)
        back = read_cohen_log(log)
        assert back["predict"].tolist() == [-1, 4] and back["radius"].tolist() == df["radius"].tolist()
        store.delete_run(seq)
        assert store._query("SELECT COUNT(*) FROM sequential_runs") == [(0,)]
        assert store._query("SELECT COUNT(*) FROM sequential_results") == [(0,)]
        assert store.integrity_check() == "ok"


def test_find_run_tells_sequential_settings_apart(store: Store) -> None:
    fixed = store.create_run(**CONFIG)
    seq = store.create_run(**CONFIG, sequential=SEQUENTIAL)
    assert store.find_run(**CONFIG) == fixed
    assert store.find_run(**CONFIG, sequential=SEQUENTIAL) == seq
    assert store.find_run(**CONFIG, sequential={**SEQUENTIAL, "radius": 0.5}) is None
    with pytest.raises(InvalidArgument, match="sequential settings"):
        store.create_run(**CONFIG, sequential={})


def test_an_annotation_is_recorded_and_does_not_change_the_run_identity(store: Store) -> None:
    run_id = store.create_run(**{**CONFIG, "options": {"channels_last": True}})
    audit = {"audited_r": 0.52, "declared_r": 0.4, "flagged": True}
    store.annotate_run(run_id, "sigma_audit", audit)
    assert store.run(run_id)["options"] == {"channels_last": True, "sigma_audit": audit}
    # the certify command asks with the options it builds, which hold no annotation: still this run
    assert store.find_run(**{**CONFIG, "options": {"channels_last": True}}) == run_id
    assert store.find_run(**CONFIG) is None  # a real option still tells runs apart
    store.annotate_run(run_id, "sigma_audit", None)
    assert store.run(run_id)["options"] == {"channels_last": True}
    with pytest.raises(InvalidArgument, match="run annotation 'autocast'"):
        store.annotate_run(run_id, "autocast", "bf16")
    with pytest.raises(StoreError, match="not found"):
        store.annotate_run(run_id + 100, "sigma_audit", audit)


def test_an_imported_ddrs_log_records_no_semi_elasticity(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "ddrs.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    run_id = import_cohen_log(store, log, name="ddrs log", dataset="digits", sigma="ddrs:0.12,0.5,10")
    info = store.run(run_id)
    assert info["r"] is None and info["sigma_params"]["kind"] == "ddrs"
    knn = tmp_path / "knn.tsv"
    knn.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.4\t1\t1.0\n")
    assert store.run(import_cohen_log(store, knn, name="knn log", dataset="digits", sigma="knn:0.25,0.4,20"))["r"] \
        == 0.4
