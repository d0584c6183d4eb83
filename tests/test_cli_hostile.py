"""Hostile input to the store verbs (runs, table, export, import, bound, radius, delete, rename).

Every refused command exits 2 with exactly one line on stderr naming the problem, prints nothing
on stdout, and leaves the store as it was (same runs, same results); where the store is missing,
it stays missing (no file, no folder). Cases run in-process through ``smoothviz.cli.main``;
subprocesses only where a case needs one (a FIFO, peak memory, a killed import).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from apptest_support import hostile_store, stop_running

from smoothviz.cli import main
from smoothviz.store import Store, import_cohen_log

ROOT = Path(__file__).resolve().parents[1]
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
GOOD_ROWS = "0\t3\t3\t0.5\t1\t0:00:01.250000\n1\t7\t-1\t0.0\t0\t2.5\n2\t1\t2\t0.25\t0\t1.0\n"
HUGE_INTS = ("9223372036854775808", "1180591620717411303424")


def _snapshot(db: Path) -> tuple:
    """Every runs and results row, read without smoothviz (None when there is no file)."""
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return (c.execute("SELECT * FROM runs ORDER BY id").fetchall(),
                c.execute("SELECT * FROM results ORDER BY run_id, idx").fetchall())


def _listing(folder: Path) -> set[str]:
    """Files under ``folder`` (SQLite's -wal/-shm side files come and go with connections)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def refused(capsys: pytest.CaptureFixture[str], argv: list, fragment: str) -> str:
    """Run ``argv``; assert exit 2, one stderr line containing ``fragment``, no stdout; return the line."""
    code = _code([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], (fragment, lines[0])
    assert len(lines[0]) < 500 and out == "", (len(lines[0]), out)
    return lines[0]


@pytest.fixture()
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with a certify run (id 1, "cert") and an imported run (id 2, "imp"); SMOOTHVIZ_DB points
    elsewhere, so a verb that ignored --db would fail loudly."""
    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "elsewhere" / "never.db"))
    path = tmp_path / "store.db"
    with Store(path) as s:
        run_id = s.create_run("cert", "digits", "test", None, "constant:0.25", {"kind": "constant", "sigma": 0.25},
                              0.0, 100, 1000, 0.001, "cpu", [0, 1, 2], 0, 256)
        for i in range(3):
            s.add_result(run_id, {"idx": i, "label": i, "predict": i, "correct": True, "p_a_lower": 0.9,
                                  "sigma": 0.25, "radius": 0.3, "naive_radius": 0.3, "counts": [1, 999],
                                  "seconds": 0.1})
        s.set_status(run_id, "done")
        log = tmp_path / "imp.tsv"
        log.write_text(HEADER + GOOD_ROWS)
        import_cohen_log(s, log, "imp", "digits", "0.25", num_classes=10)
    return path


def _log(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------
# (verb arguments after the verb's own required ones, the fragment the one line must contain).
# DB stands for the populated store, DIR for a folder, LOG for a good new log file.

BOUND = ["bound", "--sigma0", "0.25", "--sigma1", "0.26", "--distance", "0.1", "--pa", "0.9", "--dim", "3072"]
RADIUS = ["radius", "--pa", "0.9", "--sigma0", "0.25", "--r", "0.1", "--dim", "3072"]


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


MATH_CASES = [
    *[(_set(BOUND, "--dim", v), "--dim") for v in ("0", "1.5", "abc", "nan", "100000001", *HUGE_INTS)],
    *[(_set(RADIUS, "--dim", v), "--dim") for v in ("-3", "inf", *HUGE_INTS)],
    *[(_set(BOUND, "--sigma0", v), "--sigma0") for v in ("0", "-1", "nan", "inf", "abc", "1e309")],
    (_set(BOUND, "--sigma0", "1e-320"), "sigma0 = 9.99989e-321 is subnormal"),  # 1e-320 as a double
    (_set(BOUND, "--sigma1", "5e-324"), "sigma1 = 4.94066e-324 is subnormal"),
    (_set(_set(BOUND, "--sigma0", "1e-300"), "--sigma1", "1e300"), "sigma1/sigma0"),
    (_set(_set(BOUND, "--sigma0", "1e-300"), "--distance", "1e300"), "distance/sigma0"),
    *[(_set(BOUND, "--distance", v), "--distance") for v in ("-1", "nan", "inf")],
    *[(_set(BOUND, "--pa", v), "--pa") for v in ("0", "1.5", "nan", "-inf", "x")],
    *[(_set(RADIUS, "--pa", v), "--pa") for v in ("0", "1.0000001", "nan")],
    *[(_set(RADIUS, "--r", v), "--r") for v in ("-0.1", "nan", "inf", "1e309")],
    (_set(RADIUS, "--sigma0", "1e-310"), "subnormal"),
    (_set(_set(_set(RADIUS, "--sigma0", "1e308"), "--pa", "0.999"), "--r", "0"), "beyond double precision"),
    (_set(_set(RADIUS, "--sigma0", "1e300"), "--r", "1e100"), "r * sigma0"),
    (BOUND[:-2], "--dim"),
]


@pytest.mark.parametrize("argv,fragment", MATH_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bound_and_radius_refuse_in_one_line(argv: list[str], fragment: str, capsys) -> None:
    refused(capsys, argv, fragment)


def test_dim_range_is_the_library_range() -> None:
    from smoothviz import bounds
    from smoothviz.commands import _args

    assert _args.DIM_MAX == bounds.DIM_MAX


# ------------------------------------------------------------------------------------------------
# store verbs against the populated store: nothing may change

STORE_CASES = [
    (["table", "99"], "no run with id or name '99'"),
    (["table", "1", "nope"], "no run with id or name 'nope'"),
    *[(["table", v], "no run") for v in HUGE_INTS],
    (["table", "x" * 5_000_000], "no run with id or name 'xxxx"),
    *[(["table", "1", "--radii", v], "--radii") for v in ("abc", "nan", "inf", "-1", "", ",", "0,1e400")],
    (["table", "1", "--use", "bogus"], "--use"),
    (["table"], "RUN"),
    (["export", "99"], "no run"),
    (["export", "1", "--format", "xml"], "--format"),
    (["export", "1", "--out", "DIR"], "is a directory"),
    (["export", "1", "--out", "/dev/full"], "device or special file"),
    (["export", "1", "--out", "DIR/missing/out.tsv"], "does not exist"),
    (["export", "1", "--out", "/proc/version"], "/proc/version"),
    (["runs", "--bogus"], "--bogus"),
    (["delete", "99", "--yes"], "no run with id or name '99'"),
    (["delete", "1", "99", "--yes"], "'99'"),  # all or nothing: run 1 stays
    *[(["delete", v, "--yes"], "no run") for v in HUGE_INTS],
    (["delete", "1"], "without --yes"),  # pytest's stdin is no terminal
    (["rename", "99", "fresh"], "no run"),
    (["rename", "1", "imp"], "run #2 already has this name"),
    (["rename", "1", ""], "is empty"),
    (["rename", "1", "   "], "is empty"),
    (["rename", "1", "x" * 121], "longer than 120"),
    (["rename", "1", "a\nb"], "U+000A"),
    (["rename", "1", "bell\x07"], "U+0007"),
    (["rename", "1", "rtl\u202eoverride"], "U+202E"),
    (["rename", "1", "42"], "is a number"),
    (["rename", "1"], "NEW_NAME"),
]


@pytest.mark.parametrize("argv,fragment", STORE_CASES, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_store_verbs_refuse_and_change_nothing(argv: list[str], fragment: str, db: Path, tmp_path: Path, capsys) -> None:
    before, files = _snapshot(db), _listing(tmp_path)
    argv = [a.replace("DIR", str(tmp_path)) if a.startswith("DIR") else a for a in argv]
    refused(capsys, [*argv, "--db", db], fragment)
    assert _snapshot(db) == before and _listing(tmp_path) == files


def test_export_checks_out_before_the_store(tmp_path: Path, capsys) -> None:
    line = refused(capsys, ["export", "1", "--out", tmp_path, "--db", tmp_path / "missing.db"], "--out")
    assert "is a directory" in line and not (tmp_path / "missing.db").exists()


# ------------------------------------------------------------------------------------------------
# missing, odd or foreign stores: reading, deleting and renaming verbs create and alter nothing

READERS = [["runs"], ["runs", "--json"], ["table", "1"], ["export", "1"], ["delete", "1", "--yes"],
           ["rename", "1", "fresh"]]


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
@pytest.mark.parametrize("where", ["missing.db", "no/such/dir/x.db"])
def test_missing_store_is_not_created(argv: list[str], where: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "env.db"))
    refused(capsys, [*argv, "--db", tmp_path / where], "no results store")
    assert _listing(tmp_path) == set()


def test_smoothviz_db_is_honoured(tmp_path: Path, db: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "from-env.db"))
    refused(capsys, ["runs"], f"no results store at {tmp_path / 'from-env.db'}")
    monkeypatch.setenv("SMOOTHVIZ_DB", str(db))
    assert main(["runs"]) == 0 and "imp" in capsys.readouterr().out
    assert main(["import", str(_log(tmp_path, "env.tsv", HEADER + "5\t1\t1\t0.1\t1\t1.0\n")), "--name", "via env",
                 "--dataset", "digits"]) == 0
    capsys.readouterr()
    with Store(db) as s:
        assert "via env" in s.runs()["name"].tolist()


def _odd_stores(tmp_path: Path) -> list[tuple[Path, str]]:
    empty = _log(tmp_path, "empty.db", b"")
    garbage = _log(tmp_path, "garbage.db", os.urandom(4096))
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
    return [(tmp_path, "is a directory"), (Path("/dev/full"), "not a regular file"),
            (Path("/proc/version"), "/proc/version"), (empty, "empty file"), (garbage, "garbage.db"),
            (foreign, "not a smoothviz database")]


@pytest.mark.parametrize("argv", READERS + [["import", "LOG", "--name", "n", "--dataset", "digits"]], ids=" ".join)
def test_odd_store_files_are_refused_untouched(argv: list[str], tmp_path: Path, capsys) -> None:
    (tmp_path / "logs").mkdir()
    log = _log(tmp_path / "logs", "new.tsv", HEADER + GOOD_ROWS)
    argv = [str(log) if a == "LOG" else a for a in argv]
    for path, fragment in _odd_stores(tmp_path):
        if argv[0] == "import" and fragment == "empty file":
            continue  # an empty file is an empty SQLite database: import may fill it
        before = path.read_bytes() if path.parent == tmp_path else None
        refused(capsys, [*argv, "--db", path], fragment)
        if before is not None:
            assert path.read_bytes() == before, path


# ------------------------------------------------------------------------------------------------
# import: bad files, contradictory rows, duplicates

IMPORT_FILES = [
    ("missing", None, "file not found"),
    ("empty", "", "line 1: expected the tab-separated header"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50, "cannot read as UTF-8"),
    ("spaces", HEADER.replace("\t", " ") + GOOD_ROWS, "header"),
    ("header only", HEADER + "\n\n   \n", "no result lines after the header"),
    ("five fields", HEADER + "0\t1\t1\t0.5\t1\n", "line 2: expected 6 tab-separated fields, got 5"),
    ("long field", HEADER + "0\t1\t" + "7" * 3000 + "\t0.5\t1\t1.0\n", "predict '777777"),
    ("long word", HEADER + "0\t1\t" + "x" * 3000 + "\t0.5\t1\t1.0\n", "(3,000 characters)"),
    ("line too long", HEADER + "0\t1\t" + "y" * 50_000_000 + "\t0.5\t1\t1.0\n", "line 2: longer than 4096 characters"),
    ("correct but wrong", HEADER + "0\t3\t4\t0.5\t1\t1.0\n", "correct = 1 but predict 4 differs from label 3"),
    ("wrong but correct", HEADER + "0\t3\t3\t0.5\t0\t1.0\n", "correct = 0 but predict equals label 3"),
    ("abstain radius", HEADER + "0\t3\t-1\t0.5\t0\t1.0\n", "predict -1 (abstain) with radius 0.5"),
    ("abstain correct", HEADER + "0\t3\t-1\t0.0\t1\t1.0\n", "correct = 1 but predict -1 differs"),
    ("label class", HEADER + "0\t10\t10\t0.5\t1\t1.0\n", "label 10 is outside the dataset's classes 0 to 9"),
    ("predict class", HEADER + "0\t1\t12\t0.5\t0\t1.0\n", "predict 12 is outside -1 (abstain) and the dataset's"),
    ("negative label", HEADER + "0\t-1\t-1\t0.0\t0\t1.0\n", "label -1 is outside"),
    ("predict -2", HEADER + "0\t1\t-2\t0.0\t0\t1.0\n", "predict -2 is outside"),
    ("idx 2^63", HEADER + f"{HUGE_INTS[0]}\t1\t1\t0.5\t1\t1.0\n", f"idx {HUGE_INTS[0]} is outside"),
    ("idx 2^70", HEADER + f"{HUGE_INTS[1]}\t1\t1\t0.5\t1\t1.0\n", f"idx '{HUGE_INTS[1]}' is outside"),
    ("idx float", HEADER + "1.5\t1\t1\t0.5\t1\t1.0\n", "idx '1.5' is not an integer"),
    ("radius nan", HEADER + "0\t1\t1\tnan\t1\t1.0\n", "radius 'nan' must be finite"),
    ("radius inf", HEADER + "0\t1\t1\tinf\t1\t1.0\n", "radius 'inf' must be finite"),
    ("radius text", HEADER + "0\t1\t1\tbig\t1\t1.0\n", "radius 'big' is not a number"),
    ("correct 2", HEADER + "0\t1\t1\t0.5\t2\t1.0\n", "correct must be 0 or 1"),
    ("time nan", HEADER + "0\t1\t1\t0.5\t1\tnan\n", "time 'nan'"),
    ("time huge", HEADER + "0\t1\t1\t0.5\t1\t1e400\n", "time '1e400'"),
    ("time negative", HEADER + "0\t1\t1\t0.5\t1\t-1 day, 0:00:00\n", "time '-1 day, 0:00:00'"),
    ("time minutes", HEADER + "0\t1\t1\t0.5\t1\t0:61:00\n", "time '0:61:00'"),
    ("idx twice", HEADER + GOOD_ROWS + "2\t1\t1\t0.5\t1\t1.0\n", "line 5: idx 2 appears twice"),
]


@pytest.mark.parametrize("content,fragment", [c[1:] for c in IMPORT_FILES], ids=[c[0] for c in IMPORT_FILES])
def test_import_refuses_bad_files(content, fragment: str, db: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.tsv"
    if content is not None:
        _log(tmp_path, "bad.tsv", content)
    before, files = _snapshot(db), _listing(tmp_path)
    refused(capsys, ["import", path, "--name", "fresh", "--dataset", "digits", "--db", db], fragment)
    assert _snapshot(db) == before and _listing(tmp_path) == files
    # the same refusal against a store that does not exist yet creates none
    refused(capsys, ["import", path, "--name", "fresh", "--dataset", "digits", "--db", tmp_path / "new.db"], fragment)
    assert not (tmp_path / "new.db").exists()


IMPORT_OPTIONS = [
    (["--name", ""], "--name: run name '' is empty"),
    (["--name", " \t "], "is empty"),
    (["--name", "n" * 200], "longer than 120"),
    (["--name", "tab\there"], "U+0009"),
    (["--name", "7"], "is a number"),
    (["--name", "imp"], "--name 'imp': run #2 already has this name; choose another --name"),
    (["--dataset", "imagenet-21k"], "unknown dataset 'imagenet-21k'"),
    (["--sigma", "abc"], "--sigma"),
    (["--sigma", "nan"], "--sigma"),
    (["--sigma", "-1"], "--sigma"),
    (["--sigma", "1e400"], "--sigma"),
    (["--sigma", "k" * 100_000], "--sigma"),
    (["--n", "0"], "--n"),
    *[(["--n", v], "--n") for v in HUGE_INTS],
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "0"], "--alpha"),
]


@pytest.mark.parametrize("options,fragment", IMPORT_OPTIONS, ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None)
def test_import_refuses_bad_options(options: list[str], fragment: str, db: Path, tmp_path: Path, capsys) -> None:
    log = _log(tmp_path, "new.tsv", HEADER + "9\t1\t1\t0.5\t1\t1.0\n")
    chosen = {"--name": "fresh", "--dataset": "digits", "--db": str(db), options[0]: options[1]}
    argv = ["import", log, *(item for pair in chosen.items() for item in pair)]
    before = _snapshot(db)
    refused(capsys, argv, fragment)
    assert _snapshot(db) == before


def test_import_duplicate_content_names_the_run(db: Path, tmp_path: Path, capsys) -> None:
    again = _log(tmp_path, "copy-with-other-name.tsv", HEADER + GOOD_ROWS)  # the bytes of run 2's file
    before = _snapshot(db)
    line = refused(capsys, ["import", again, "--name", "fresh", "--dataset", "digits", "--db", db],
                   "already imported as run #2")
    assert "copy-with-other-name.tsv" in line and _snapshot(db) == before
    changed = _log(tmp_path, "changed.tsv", HEADER + GOOD_ROWS + "\n")  # one more byte: a new file
    assert main(["import", str(changed), "--name", "fresh", "--dataset", "digits", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"run 3: imported 3 points from {changed}"


def test_import_messages_use_the_source_name_for_uploads(tmp_path: Path) -> None:
    """The dashboard passes bytes and the upload's name: no temporary path appears in messages."""
    from smoothviz.errors import LogFormatError

    with Store(tmp_path / "s.db") as s:
        with pytest.raises(LogFormatError) as info:
            import_cohen_log(s, (HEADER + "0\t1\t1\t0.5\t1\tsoon\n").encode(), "u", "digits", source_name="my log.tsv")
        assert str(info.value).startswith("my log.tsv: line 2: time 'soon'")
        run_id = import_cohen_log(s, (HEADER + GOOD_ROWS).encode(), "u", "digits", num_classes=10,
                                  source_name="my log.tsv")
        info_run = s.run(run_id)
        assert info_run["options"]["imported_from"] == "my log.tsv"
        assert info_run["message"] == "imported from my log.tsv"


def test_fifo_is_refused_without_blocking(db: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    res = subprocess.run([sys.executable, "-m", "smoothviz", "import", str(fifo), "--name", "f", "--dataset",
                          "digits", "--db", str(db)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and res.stdout == ""
    want = f"smoothviz import: error: {fifo}: is a named pipe (FIFO), not a regular file; save the log to a file first"
    assert res.stderr.strip().splitlines() == [want]


_MEASURED = textwrap.dedent("""
    import resource, sys
    from smoothviz.cli import main
    code = main(sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    sys.exit(code)
""")


def _peak_kib(tmp_path: Path, argv: list[str]) -> tuple[int, str]:
    report = tmp_path / "peak.txt"
    res = subprocess.run([sys.executable, "-c", _MEASURED, str(report), *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return int(report.read_text()), res.stderr


def test_huge_logs_are_streamed_with_little_memory(db: Path, tmp_path: Path) -> None:
    small = _log(tmp_path, "small.tsv", HEADER)
    blank = tmp_path / "blank.tsv"
    with blank.open("w") as f:
        f.write(HEADER)
        f.write("\n" * 20_000_000)  # 20 MB of blank lines
    field = tmp_path / "field.tsv"
    with field.open("w") as f:
        f.write(HEADER + "0\t1\t1\t")
        f.write("9" * 50_000_000)  # a 50 MB field
        f.write("\t1\t0.5\n")
    base, _ = _peak_kib(tmp_path, ["import", str(small), "--name", "s", "--dataset", "digits", "--db", str(db)])
    peak, err = _peak_kib(tmp_path, ["import", str(blank), "--name", "b", "--dataset", "digits", "--db", str(db)])
    assert "no result lines after the header" in err
    assert peak - base < 10_000, (base, peak)  # KiB; holding the file's lines would take ~1 GB
    peak, err = _peak_kib(tmp_path, ["import", str(field), "--name", "f", "--dataset", "digits", "--db", str(db)])
    assert "line 2: longer than 4096 characters" in err and len(err) < 300
    assert peak - base < 10_000, (base, peak)


# ------------------------------------------------------------------------------------------------
# a killed import leaves nothing; a rerun succeeds once

_KILLED_MIDWAY = textwrap.dedent("""
    import os, signal, sqlite3, sys
    # kill -9 this process from inside SQLite's progress handler, after ~3 million VM steps: well
    # inside the import's one transaction (the schema and the checks take a few thousand)
    connect = sqlite3.connect
    def counting_connect(*args, **kwargs):
        conn = connect(*args, **kwargs)
        steps = [0]
        def tick():
            steps[0] += 1
            if steps[0] == 3000:
                os.kill(os.getpid(), signal.SIGKILL)
            return 0
        conn.set_progress_handler(tick, 1000)
        return conn
    sqlite3.connect = counting_connect
    from smoothviz.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_import_leaves_no_run_and_a_rerun_succeeds_once(tmp_path: Path) -> None:
    log = tmp_path / "big.tsv"
    with log.open("w") as f:
        f.write(HEADER)
        for i in range(200_000):
            label = i % 10
            f.write(f"{i}\t{label}\t{label}\t0.5\t1\t0:00:00.100000\n")
    db = tmp_path / "kill.db"
    argv = ["import", str(log), "--name", "big", "--dataset", "digits", "--db", str(db)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wal = db.with_name(db.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 1_000_000  # rows had been written, uncommitted
    with Store(db, create=False) as s:
        assert s.runs().empty and s.integrity_check() == "ok"
        assert s._query("SELECT COUNT(*) FROM results") == [(0,)]
    done = subprocess.run([sys.executable, "-m", "smoothviz", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"run 1: imported 200,000 points from {log}"
    again = subprocess.run([sys.executable, "-m", "smoothviz", *argv[:3], "other", *argv[4:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 2 and "already imported as run #1" in again.stderr
    with Store(db, create=False) as s:
        runs = s.runs()
        assert runs["name"].tolist() == ["big"] and runs["done"].tolist() == [200_000]
        assert s.run(1)["status"] == "done"


# ------------------------------------------------------------------------------------------------
# every kind of run a user meets: the reading verbs all work

def test_hostile_store_reads_cleanly(tmp_path: Path, capsys) -> None:
    db = tmp_path / "hostile.db"
    ids = hostile_store(db, tmp_path)
    try:
        assert main(["runs", "--db", str(db)]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        rows = {int(line.split()[0]): line for line in out.splitlines()[1:]}
        assert len(rows) == 9
        assert " interrupted " in rows[ids["interrupted"]] and " running " in rows[ids["running"]]
        imported = rows[ids["imported"]].split()
        assert imported[imported.index("constant:0.25") + 1:][:3] == ["-", "-", "-"]  # n0, n, alpha
        assert main(["runs", "--json", "--db", str(db)]) == 0
        listing = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
        assert listing[ids["imported"]]["n0"] is None and listing[ids["imported"]]["n"] is None
        assert listing[ids["done"]]["n0"] == 100 and listing[ids["interrupted"]]["status"] == "interrupted"
        with Store(db, create=False) as s:
            frame = s.runs()
            assert all(v is None or type(v) is int for col in ("n0", "n", "seed", "batch_size") for v in frame[col])
            assert s.run(ids["imported"])["n0"] is None and s.run(ids["running"])["status"] == "running"
        for key, run_id in ids.items():
            if key == "running_pid":
                continue
            assert main(["table", str(run_id), "--db", str(db)]) == 0
            assert main(["table", str(run_id), "--json", "--db", str(db)]) == 0
            for fmt in ("cohen", "csv"):
                assert main(["export", str(run_id), "--format", fmt, "--db", str(db)]) == 0
            out, err = capsys.readouterr()
            assert err == "" and "Traceback" not in out, (key, err)
        refused(capsys, ["delete", str(ids["running"]), "--yes", "--db", db], "is being certified by process")
        with Store(db, create=False) as s:
            assert s.run(ids["running"])["status"] == "running"
    finally:
        stop_running(ids)
    assert main(["delete", str(ids["running"]), str(ids["interrupted"]), "--yes", "--db", str(db)]) == 0
    assert "deleted run" in capsys.readouterr().out
    with Store(db, create=False) as s:
        assert len(s.runs()) == 7


# ------------------------------------------------------------------------------------------------
# the verbs that change the store, when all is well

def test_delete_asks_on_a_terminal(db: Path, capsys, monkeypatch) -> None:
    class Terminal:
        def __init__(self, answer: str) -> None:
            self.answer = answer

        def isatty(self) -> bool:
            return True

        def readline(self) -> str:
            return self.answer

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["delete", "imp", "--db", str(db)]) == 1
    out, err = capsys.readouterr()
    assert "delete run 2 ('imp', 3 results)? [y/N]" in err and "nothing deleted" in err and out == ""
    with Store(db) as s:
        assert len(s.runs()) == 2
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert main(["delete", "imp", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "deleted run 2 ('imp', 3 results)"
    with Store(db) as s:
        assert s.runs()["id"].tolist() == [1] and s._query("SELECT COUNT(*) FROM results WHERE run_id=2") == [(0,)]


def test_rename_keeps_names_unique(db: Path, capsys) -> None:
    assert main(["rename", "cert", "  baseline σ=0.25  ", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "run 1: renamed 'cert' to 'baseline σ=0.25'"
    assert main(["rename", "2", "imp", "--db", str(db)]) == 0  # its own name: allowed
    capsys.readouterr()
    with Store(db) as s:
        assert s.runs().set_index("id")["name"].to_dict() == {1: "baseline σ=0.25", 2: "imp"}
        assert s.resolve_run("baseline σ=0.25") == 1


# ------------------------------------------------------------------------------------------------
# help is instant: no torch (nor scipy or pandas for the store and math verbs) before a verb runs

_IMPORTS_AFTER_HELP = textwrap.dedent("""
    import contextlib, io, json, sys
    from smoothviz.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            main(sys.argv[1:])
        except SystemExit as exc:
            code = exc.code
    heavy = sorted(m for m in ("torch", "scipy", "pandas", "streamlit", "plotly") if m in sys.modules)
    print(json.dumps({"code": code, "heavy": heavy, "help": text.getvalue()}))
""")

MY_VERBS = ["runs", "table", "export", "import", "bound", "radius", "delete", "rename"]


def _help_imports(argv: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER_HELP, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return json.loads(res.stdout)


def _all_verbs() -> list[str]:
    from smoothviz import cli

    return sorted(summary.NAME for summary in (cli._summary(name) for name in cli._module_names()))


def test_top_level_help_lists_every_verb_without_heavy_imports() -> None:
    got = _help_imports(["--help"])
    assert got["code"] == 0 and got["heavy"] == [], f"heavy modules imported by --help: {got['heavy']}"
    for verb in _all_verbs():
        assert f"    {verb} " in got["help"] or f"    {verb}\n" in got["help"], verb


@pytest.mark.parametrize("verb", MY_VERBS)
def test_store_and_math_verbs_help_imports_nothing_heavy(verb: str) -> None:
    got = _help_imports([verb, "--help"])
    assert got["code"] == 0 and f"usage: smoothviz {verb}" in got["help"]
    assert got["heavy"] == [], f"heavy modules imported by `{verb} --help`: {got['heavy']}"


@pytest.mark.parametrize("verb", sorted(set(_all_verbs()) - set(MY_VERBS)))
def test_every_other_verbs_help_imports_no_torch(verb: str) -> None:
    got = _help_imports([verb, "--help"])
    assert got["code"] == 0 and f"usage: smoothviz {verb}" in got["help"]
    assert "torch" not in got["heavy"], f"heavy modules imported by `{verb} --help`: {got['heavy']}"
