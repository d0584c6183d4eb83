"""SQLite results store: runs and per-point certification results, Cohen-log import/export, CSV.

One ``runs`` row per certification (its full configuration, status and process) and one
``results`` row per certified point, committed in its own transaction as soon as the point is
done. ``PRIMARY KEY (run_id, idx)`` plus ``INSERT OR IGNORE`` means a resumed run never
duplicates a point; WAL mode and a busy timeout let several processes write at once. An imported
log is the exception: its run and all its rows are written in one transaction, so an import is
all or nothing.

Sequential (anytime-valid) runs add two side tables, created when the first such run is recorded,
so that stores written before them stay readable as they are and fixed-n runs keep their exact
rows: ``sequential_runs`` (the run's stopping rule and confidence sequence, as JSON) and
``sequential_results`` (per point: estimation samples used, selection samples, c_A and its votes,
the upper bound on p_A, the stopping reason, the checkpoints read), each row committed in the
transaction of its ``results`` row and deleted with it (foreign keys with ON DELETE CASCADE).

A run executed by several processes at once (torchrun ranks, ``smoothviz.distributed``) records
their number in the side table ``run_ranks``, created on first use like the sequential tables;
a run without a row there last ran in one process, and executing it again in one process
removes its row.

While a sequential run executes, the process running it records the bounds of the points it is
sampling (the engine's pool: samples so far, lower and upper bound on p_A, sigma(x), c_A and the
label) in the side table ``sequential_in_flight``, created on first use: one transaction replaces
the run's rows every few seconds, and any change of the run's status removes them, so rows exist
only while the run executes. A page reads them to draw what is certified so far.

A sweep (``smoothviz.sweep``: a grid of certifications over sigma parameters, models, n and alpha
on the same points, executed as one job) is one row of the side table ``sweeps`` (its identity,
its configuration, status, process and cancel flag, like a run's) and one row of ``sweep_runs``
per grid cell (the cell's parameters and its child run). Both are created with the first sweep,
so older stores stay readable as they are. A child run is an ordinary certify run; deleting it
leaves its cell without a run (``run_id`` NULL), which resuming the sweep creates again.

pandas is imported only by the functions that return data frames, so the command line can open a
store without loading it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import socket
import sqlite3
import stat
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from smoothviz.errors import (
    DuplicateImport,
    InvalidArgument,
    LogFormatError,
    RunBusy,
    RunNameTaken,
    StoreError,
)
from smoothviz.outputs import atomic_output
from smoothviz.processes import pid_alive

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_DB = Path("runs/smoothviz.db")
DB_ENV = "SMOOTHVIZ_DB"
SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "cancelled", "failed", "interrupted")
RESULT_COLUMNS = [
    "idx", "label", "predict", "correct", "p_a_lower", "sigma", "radius", "naive_radius",
    "counts", "seconds",
]
# Per-point fields of a sequential run beyond RESULT_COLUMNS (table sequential_results).
SEQUENTIAL_COLUMNS = [
    "samples", "selection", "class_a", "votes_a", "p_a_upper", "stop_reason", "checkpoints",
]
COHEN_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]
RUN_NAME_MAX = 120  # characters of a run name
ID_MAX = 2**63 - 1  # SQLite's INTEGER range
INDEX_MAX = 2**31 - 1  # largest point index or class label an imported log may hold
LOG_LINE_MAX = 4096  # characters of one log line (six short fields need far fewer)
_QUOTE_MAX = 40  # characters of a field quoted in a message

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'certify',
    created REAL NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    checkpoint TEXT,
    checkpoint_sha256 TEXT,
    sigma_spec TEXT,
    sigma_params TEXT NOT NULL DEFAULT '{}',
    r REAL,
    n0 INTEGER,
    n INTEGER,
    alpha REAL,
    device TEXT,
    indices TEXT NOT NULL,
    total INTEGER NOT NULL,
    seed INTEGER,
    batch_size INTEGER,
    options TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    message TEXT NOT NULL DEFAULT '',
    cancel INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    started REAL,
    updated REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    predict INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    p_a_lower REAL,
    sigma REAL,
    radius REAL NOT NULL,
    naive_radius REAL,
    counts TEXT,
    seconds REAL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""

# Side tables of sequential runs (see the module docstring); created on first use, never altered.
_SEQUENTIAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS sequential_runs (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sequential_results (
    run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    selection INTEGER NOT NULL,
    class_a INTEGER,
    votes_a INTEGER NOT NULL,
    p_a_upper REAL,
    stop_reason TEXT NOT NULL,
    checkpoints INTEGER NOT NULL,
    PRIMARY KEY (run_id, idx),
    FOREIGN KEY (run_id, idx) REFERENCES results(run_id, idx) ON DELETE CASCADE
);
"""

# The side table of the points a running sequential run is sampling (see the module docstring).
_IN_FLIGHT_SCHEMA = """
CREATE TABLE IF NOT EXISTS sequential_in_flight (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    lower REAL NOT NULL,
    upper REAL NOT NULL,
    sigma REAL,
    class_a INTEGER,
    label INTEGER,
    updated REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
)
"""
# What each in-flight row holds (``Store.set_in_flight`` takes them as lists, ``in_flight`` returns them).
IN_FLIGHT_FIELDS = ("idx", "samples", "lower", "upper", "sigma", "class_a", "label")

# The side table of runs executed on several processes (see the module docstring).
_RANKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_ranks (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    world_size INTEGER NOT NULL
)
"""

# The side tables of sweeps (see the module docstring); created with the first sweep, never altered.
_SWEEP_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    identity TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    message TEXT NOT NULL DEFAULT '',
    cancel INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    started REAL,
    updated REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    cell TEXT NOT NULL,
    run_id INTEGER UNIQUE REFERENCES runs(id) ON DELETE SET NULL,
    PRIMARY KEY (sweep_id, position)
)
"""
_SWEEP_COLUMNS = ("id", "name", "created", "identity", "config", "status", "message", "cancel", "pid", "host",
                  "started", "updated", "finished")

_RUN_COLUMNS = (
    "id", "name", "kind", "created", "dataset", "split", "checkpoint", "checkpoint_sha256",
    "sigma_spec", "sigma_params", "r", "n0", "n", "alpha", "device", "indices", "total", "seed",
    "batch_size", "options", "status", "message", "cancel", "pid", "host", "started", "updated",
    "finished",
)


_INTEGER_COLUMNS = ("n0", "n", "seed", "batch_size")  # nullable integers: int or None, never float
# Run options recorded after a run was created that say something about it (the audit of its
# sigma's semi-elasticity, smoothviz.audit) without changing what it computes: find_run ignores
# them, so a rerun of the certify command still resumes the run.
ANNOTATION_KEYS = ("sigma_audit",)


def _identity(options: Mapping[str, Any] | None) -> str:
    """A run's options without its annotations, as canonical JSON (what identifies the run)."""
    return _json({k: v for k, v in (options or {}).items() if k not in ANNOTATION_KEYS})


def file_sha256(path: str | Path) -> str | None:
    """Hex SHA-256 of a file's bytes, or None when the file does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_db() -> Path:
    """The results database that the CLI and the dashboard share: ``$SMOOTHVIZ_DB``, else runs/smoothviz.db."""
    env = os.environ.get(DB_ENV, "").strip()
    return Path(env) if env else DEFAULT_DB


def quote(text: str, limit: int = _QUOTE_MAX) -> str:
    """``text`` for a message: its repr, cut to ``limit`` characters (a 50 MB field is not echoed)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def check_run_name(name: object) -> str:
    """A run name without surrounding blanks, else InvalidArgument saying what is wrong with it.

    Refused: non-text, empty or blank, longer than RUN_NAME_MAX characters, control or other
    invisible format characters, and names made of digits only (they would read as a run id).
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"run name must be text, not {type(name).__name__}")
    cleaned = name.strip()
    if not cleaned:
        raise InvalidArgument(f"run name {quote(name)} is empty")
    if len(cleaned) > RUN_NAME_MAX:
        raise InvalidArgument(f"run name {quote(cleaned)} is longer than {RUN_NAME_MAX} characters")
    for position, char in enumerate(cleaned, start=1):
        if unicodedata.category(char).startswith("C"):
            raise InvalidArgument(f"run name {quote(cleaned)} holds the control character "
                                  f"U+{ord(char):04X} at position {position}")
    if cleaned.isdigit():
        raise InvalidArgument(f"run name {quote(cleaned)} is a number, which would read as a run id")
    return cleaned


def _run_key(run_id: object) -> int | None:
    """``run_id`` as an SQLite integer key, or None when no run can have it."""
    try:
        key = int(run_id)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return key if 0 < key <= ID_MAX else None


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _to_row(result: Any) -> dict:
    """A PointResult (dataclass) or mapping as a plain dict."""
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    if isinstance(result, Mapping):
        return dict(result)
    raise InvalidArgument(f"result: expected a PointResult or a mapping, got {type(result).__name__}")


def _settings_json(settings: Mapping[str, Any] | None) -> str | None:
    """Sequential settings as canonical JSON (sorted keys), None for a fixed-n run."""
    if settings is None:
        return None
    if not isinstance(settings, Mapping) or not settings:
        raise InvalidArgument(f"sequential settings: expected a non-empty mapping, got {type(settings).__name__}")
    return _json(dict(settings))


def _sequential_row(d: Mapping[str, Any]) -> tuple | None:
    """SEQUENTIAL_COLUMNS of a result as values to insert, or None for a fixed-n result."""
    if d.get("stop_reason") is None:
        return None
    missing = [c for c in SEQUENTIAL_COLUMNS if c not in d]
    if missing:
        raise InvalidArgument(f"sequential result for idx {d.get('idx')}: lacks {', '.join(missing)}")
    return (int(d["samples"]), int(d["selection"]), None if d["class_a"] is None else int(d["class_a"]),
            int(d["votes_a"]), _opt_float(d["p_a_upper"]), str(d["stop_reason"]), int(d["checkpoints"]))


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def _opt_int(value: Any) -> int | None:
    """An integer column's value as a Python int, or None (SQLite may hand back a float)."""
    if value is None or (isinstance(value, float) and not value.is_integer()):
        return None
    return int(value)


def _effective_status(status: str, pid: object, host: str | None) -> str:
    """"interrupted" for a run recorded as running by a process of this host that is gone."""
    if status == "running" and pid is not None and host == socket.gethostname() and not pid_alive(pid):
        return "interrupted"
    return status


def _executing(status: str, pid: object, host: str | None) -> bool:
    """Whether a process may be executing the run now: running, and not known to be dead."""
    return _effective_status(status, pid, host) == "running" and pid is not None


class Store:
    """The results database; one connection per Store, safe to share between threads."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        """Open the database at ``path`` (default: ``default_db()``).

        ``create=False`` (reading verbs, delete, rename) refuses a missing file instead of creating
        an empty store, and writes nothing to an existing file that is not a smoothviz store.
        Missing parent folders are created only for the default location; elsewhere a missing
        folder is a one-line error, so a mistyped path never leaves directories behind. An
        existing SQLite file with other tables is refused, never given smoothviz tables.
        """
        self.path = Path(path) if path is not None else default_db()
        self._lock = threading.RLock()
        exists = self._check_path(create)
        try:
            self._conn = sqlite3.connect(
                str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"database {self.path}: cannot open ({exc})") from None
        try:
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._open_schema(create or not exists)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"database {self.path}: not a readable smoothviz database ({exc})") from None
        except StoreError:
            self._conn.close()
            raise

    # ---------------------------------------------------------------- plumbing
    def _check_path(self, create: bool) -> bool:
        """Whether the file exists; StoreError for a folder, a device, a missing store or folder."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except (OSError, ValueError) as exc:
            raise StoreError(f"database {quote(str(self.path))}: cannot be used "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise StoreError(f"database {self.path}: is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"database {self.path}: is not a regular file")
            return True
        if not create:
            raise StoreError(f"no results store at {self.path}; no run has been certified or imported there")
        parent = self.path.parent
        if not parent.is_dir():
            if parent.exists():
                raise StoreError(f"database {self.path}: {parent} is not a folder")
            if self.path.resolve() != default_db().resolve():
                raise StoreError(f"database {self.path}: folder {parent} does not exist")
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"database {self.path}: cannot create {parent} ({exc.strerror})") from None
        return False

    def _open_schema(self, may_create: bool) -> None:
        """Create the schema in an empty database (when allowed), then check it is smoothviz's."""
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            if not may_create:
                raise StoreError(f"database {self.path}: an empty file, not a smoothviz store")
            with contextlib.suppress(sqlite3.OperationalError):
                self._conn.execute("PRAGMA journal_mode = WAL")
            with self._write() as c:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            tables = {"meta", "runs", "results"}
        if not {"meta", "runs", "results"} <= tables:
            shown = ", ".join(sorted(tables)[:5])
            raise StoreError(f"database {self.path}: not a smoothviz database (its tables: {quote(shown, 80)})")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        cols = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
        missing = set(_RUN_COLUMNS) - cols
        if missing:
            raise StoreError(
                f"database {self.path}: table 'runs' lacks columns {sorted(missing)}; "
                "not a smoothviz database"
            )
        version = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or version[0] != SCHEMA_VERSION:
            raise StoreError(f"database {self.path}: schema version {version and version[0]!r} is not {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"database {self.path}: {exc}") from None
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:  # disk full, locked past the timeout, ...
                self._rollback()
                raise StoreError(f"database {self.path}: {exc}") from None
            except BaseException:
                self._rollback()
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.DatabaseError as exc:
                    self._rollback()
                    raise StoreError(f"database {self.path}: {exc}") from None

    def _rollback(self) -> None:
        """Roll the open transaction back (SQLite may already have done so, e.g. on a full disk)."""
        with contextlib.suppress(sqlite3.DatabaseError):
            self._conn.execute("ROLLBACK")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"database {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- runs
    @staticmethod
    def _insert_run(c: sqlite3.Connection, fields: Mapping[str, Any]) -> int:
        """INSERT one runs row from ``fields`` (column -> value) inside an open transaction."""
        names = list(fields)
        cur = c.execute(f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                        [fields[k] for k in names])
        return int(cur.lastrowid)

    def create_run(
        self,
        name: str,
        dataset: str,
        split: str,
        checkpoint: str | Path | None,
        sigma_spec: str | None,
        sigma_params: dict | None,
        r: float | None,
        n0: int | None,
        n: int | None,
        alpha: float | None,
        device: str | None,
        indices: Sequence[int],
        seed: int | None,
        batch_size: int | None,
        options: dict | None = None,
        *,
        kind: str = "certify",
        checkpoint_sha256: str | None = None,
        sequential: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a new run (status pending) and return its id.

        ``sequential``: the settings of an anytime-valid run (``smoothviz.sequential_engine``'s
        ``SequentialSettings.to_dict()``), recorded in ``sequential_runs``; None for fixed n.
        """
        fields, settings = self._new_run(
            name, dataset, split, checkpoint, sigma_spec, sigma_params, r, n0, n, alpha, device, indices, seed,
            batch_size, options, kind=kind, checkpoint_sha256=checkpoint_sha256, sequential=sequential)
        with self._write() as c:
            return self._add_run(c, fields, settings)

    @staticmethod
    def _new_run(
        name: str, dataset: str, split: str, checkpoint: str | Path | None, sigma_spec: str | None,
        sigma_params: dict | None, r: float | None, n0: int | None, n: int | None, alpha: float | None,
        device: str | None, indices: Sequence[int], seed: int | None, batch_size: int | None,
        options: dict | None = None, *, kind: str = "certify", checkpoint_sha256: str | None = None,
        sequential: Mapping[str, Any] | None = None,
    ) -> tuple[dict, str | None]:
        """(runs row, sequential settings JSON) of a new run, checked (``create_run``'s arguments)."""
        indices = [int(i) for i in indices]
        if len(set(indices)) != len(indices):
            raise InvalidArgument("indices: contains duplicates")
        settings = _settings_json(sequential)
        if checkpoint is not None and checkpoint_sha256 is None:
            checkpoint_sha256 = file_sha256(checkpoint)
        now = time.time()
        return {
            "name": name, "kind": kind, "created": now, "dataset": dataset, "split": split,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": checkpoint_sha256, "sigma_spec": sigma_spec,
            "sigma_params": _json(sigma_params or {}), "r": None if r is None else float(r),
            "n0": n0, "n": n, "alpha": None if alpha is None else float(alpha), "device": device,
            "indices": _json(indices), "total": len(indices), "seed": seed, "batch_size": batch_size,
            "options": _json(options or {}), "status": "pending", "updated": now,
        }, settings

    def _add_run(self, c: sqlite3.Connection, fields: Mapping[str, Any], settings: str | None) -> int:
        """INSERT a run made by ``_new_run`` (and its sequential settings) inside an open transaction."""
        run_id = self._insert_run(c, fields)
        if settings is not None:
            for stmt in _SEQUENTIAL_SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("INSERT INTO sequential_runs (run_id, settings) VALUES (?, ?)", (run_id, settings))
        return run_id

    def find_run(
        self,
        name: str,
        dataset: str,
        split: str,
        checkpoint: str | Path | None,
        sigma_spec: str | None,
        n0: int | None,
        n: int | None,
        alpha: float | None,
        device: str | None,
        indices: Sequence[int],
        seed: int | None,
        options: dict | None = None,
        checkpoint_sha256: str | None = None,
        sequential: Mapping[str, Any] | None = None,
        **_ignored: Any,
    ) -> int | None:
        """The newest certify run with this exact configuration (to resume it), else None.

        The batch size is not part of the identity: noise is drawn per point and per block, so
        it does not change the counts. The device counts by type only (cpu vs cuda streams).
        ``sequential`` settings are part of it (None: a fixed-n run, never a sequential one).
        """
        settings = _settings_json(sequential)
        if checkpoint is not None and checkpoint_sha256 is None:
            checkpoint_sha256 = file_sha256(checkpoint)
        rows = self._query(
            "SELECT id, device, options FROM runs WHERE kind='certify' AND name=? AND dataset=? AND split=?"
            " AND checkpoint IS ? AND checkpoint_sha256 IS ? AND sigma_spec IS ? AND n0 IS ?"
            " AND n IS ? AND alpha IS ? AND indices=? AND seed IS ? ORDER BY id DESC",
            (
                name, dataset, split, None if checkpoint is None else str(checkpoint),
                checkpoint_sha256, sigma_spec, n0, n, None if alpha is None else float(alpha),
                _json([int(i) for i in indices]), seed,
            ),
        )
        want = (device or "").split(":")[0]
        identity = _identity(options)
        for run_id, dev, recorded in rows:
            if (dev or "").split(":")[0] == want and _identity(json.loads(recorded)) == identity \
                    and self._settings_text(int(run_id)) == settings:
                return int(run_id)
        return None

    def run(self, run_id: int) -> dict:
        """The run's configuration and state as a dict (json fields decoded, done count added).

        Integer settings (n0, n, seed, batch_size, pid) are ints or None: an imported run has
        no n0 (None), never a made-up default.
        """
        key = _run_key(run_id)
        rows = [] if key is None else self._query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id=?", (key,))
        if not rows:
            raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
        d = dict(zip(_RUN_COLUMNS, rows[0]))
        for k in ("sigma_params", "indices", "options"):
            d[k] = json.loads(d[k])
        for k in (*_INTEGER_COLUMNS, "pid"):
            d[k] = _opt_int(d[k])
        d["status"] = _effective_status(d["status"], d["pid"], d["host"])
        done, sigma_max, seconds = self._query(
            "SELECT COUNT(*), MAX(sigma), SUM(seconds) FROM results WHERE run_id=?", (key,)
        )[0]
        d["done"] = int(done)
        d["sigma_max"] = sigma_max
        d["seconds"] = seconds or 0.0
        settings = self._settings_text(key)
        d["sequential"] = None if settings is None else json.loads(settings)
        d["world_size"] = self._world_size(key, d["kind"], d["started"], self._world_sizes())
        return d

    def runs(self) -> pd.DataFrame:
        """One row per run with done/total counts and effective status, newest first.

        ``mode`` is "fixed-n" or a sequential run's mode ("radius", "fixed-radius");
        ``world_size`` the processes its last execution spanned (None before it ran, and for an
        imported run). n0, n, seed and batch_size are object columns of ints and None (pandas would
        turn a column with a missing value into floats); an imported run has None there.
        """
        import pandas as pd

        rows = self._query(
            "SELECT r.id, r.name, r.kind, r.dataset, r.split, r.checkpoint, r.sigma_spec, r.r, r.n0,"
            " r.n, r.alpha, r.device, r.seed, r.batch_size, r.status, r.message, r.pid, r.host,"
            " r.total, r.created, r.updated, r.started,"
            " (SELECT COUNT(*) FROM results s WHERE s.run_id = r.id),"
            " (SELECT COALESCE(SUM(seconds), 0) FROM results s WHERE s.run_id = r.id)"
            " FROM runs r ORDER BY r.id DESC"
        )
        cols = [
            "id", "name", "kind", "dataset", "split", "checkpoint", "sigma_spec", "r", "n0", "n",
            "alpha", "device", "seed", "batch_size", "status", "message", "pid", "host", "total",
            "created", "updated", "started", "done", "seconds",
        ]
        order = [
            "id", "name", "kind", "dataset", "split", "status", "done", "total", "sigma_spec", "r",
            "n0", "n", "alpha", "device", "seed", "batch_size", "checkpoint", "seconds", "created",
            "updated", "message", "mode", "world_size",
        ]
        modes = {run_id: json.loads(text).get("mode", "sequential") for run_id, text in self._all_settings()}
        sizes = self._world_sizes()
        records = []
        for row in rows:
            d = dict(zip(cols, row))
            d["mode"] = modes.get(d["id"], "fixed-n")
            d["world_size"] = self._world_size(d["id"], d["kind"], d["started"], sizes)
            d["status"] = _effective_status(d["status"], d["pid"], d["host"])
            for k in _INTEGER_COLUMNS:
                d[k] = _opt_int(d[k])
            d["created"], d["updated"] = _iso(d["created"]), _iso(d["updated"])
            records.append(d)
        if not records:
            return pd.DataFrame(columns=order)
        return pd.DataFrame({
            k: pd.Series([d[k] for d in records], dtype=object if k in (*_INTEGER_COLUMNS, "world_size") else None)
            for k in order
        })

    def resolve_run(self, ref: str | int) -> int:
        """A run id from an id or a unique run name."""
        text = str(ref).strip()
        key = _run_key(text) if text.isascii() and text.isdigit() else None
        if key is not None and self._query("SELECT 1 FROM runs WHERE id=?", (key,)):
            return key
        ids = [int(r[0]) for r in self._query("SELECT id FROM runs WHERE name=? ORDER BY id", (text,))]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise StoreError(f"run name {quote(text)} matches runs {', '.join(map(str, ids))}; give the id")
        raise StoreError(f"no run with id or name {quote(text)} in {self.path}")

    def set_status(self, run_id: int, status: str, message: str = "") -> None:
        """Set the run's status; "running" also records this process (pid, host) and the start,
        and an execution by this one process (``set_world_size`` records more). Any status
        removes the run's in-flight rows: they belong to an execution in progress."""
        if status not in STATUSES:
            raise InvalidArgument(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        now = time.time()
        with self._write() as c:
            if status == "running":
                cur = c.execute(
                    "UPDATE runs SET status=?, message=?, pid=?, host=?, started=?, updated=?,"
                    " finished=NULL, cancel=0 WHERE id=?",
                    (status, message, os.getpid(), socket.gethostname(), now, now, int(run_id)),
                )
                if self._has_table("run_ranks"):
                    c.execute("DELETE FROM run_ranks WHERE run_id=?", (int(run_id),))
            else:
                finished = now if status in ("done", "cancelled", "failed", "interrupted") else None
                cur = c.execute(
                    "UPDATE runs SET status=?, message=?, updated=?, finished=? WHERE id=?",
                    (status, message, now, finished, int(run_id)),
                )
            if cur.rowcount == 0:
                raise StoreError(f"run {run_id} not found in {self.path}")
            if self._has_table("sequential_in_flight"):
                c.execute("DELETE FROM sequential_in_flight WHERE run_id=?", (int(run_id),))

    def set_world_size(self, run_id: int, size: int) -> None:
        """Record that the run's current execution spans ``size`` processes (torchrun ranks)."""
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= ID_MAX:
            raise InvalidArgument(f"world size {size!r} must be an integer >= 1")
        key = _run_key(run_id)
        with self._write() as c:
            if key is None or c.execute("SELECT 1 FROM runs WHERE id=?", (key,)).fetchone() is None:
                raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
            c.execute(_RANKS_SCHEMA)
            c.execute("INSERT OR REPLACE INTO run_ranks (run_id, world_size) VALUES (?, ?)", (key, size))

    def set_sigma_params(self, run_id: int, params: dict) -> None:
        """Record the sigma function's resolved parameters (e.g. the kNN offset m computed from data)."""
        with self._write() as c:
            c.execute("UPDATE runs SET sigma_params=? WHERE id=?", (_json(params), int(run_id)))

    def annotate_run(self, run_id: int, key: str, value: Any) -> None:
        """Record ``value`` (JSON-able) under ``options[key]`` for one of ANNOTATION_KEYS; None removes it."""
        if key not in ANNOTATION_KEYS:
            raise InvalidArgument(f"run annotation {key!r}: expected one of {', '.join(ANNOTATION_KEYS)}")
        keyed = _run_key(run_id)
        with self._write() as c:
            row = None if keyed is None else c.execute("SELECT options FROM runs WHERE id=?", (keyed,)).fetchone()
            if row is None:
                raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
            options = json.loads(row[0])
            if value is None:
                options.pop(key, None)
            else:
                options[key] = value
            c.execute("UPDATE runs SET options=? WHERE id=?", (_json(options), keyed))

    def request_cancel(self, run_id: int) -> None:
        """Ask the process executing the run to stop after its current chunk."""
        with self._write() as c:
            if c.execute("UPDATE runs SET cancel=1 WHERE id=?", (int(run_id),)).rowcount == 0:
                raise StoreError(f"run {run_id} not found in {self.path}")

    def cancel_requested(self, run_id: int) -> bool:
        """Whether cancellation was requested for the run."""
        rows = self._query("SELECT cancel FROM runs WHERE id=?", (int(run_id),))
        return bool(rows and rows[0][0])

    def executing(self, run_id: int) -> bool:
        """Whether a live process is executing the run (status running and its process not gone;
        a process on another host is taken to be alive)."""
        key = _run_key(run_id)
        rows = [] if key is None else self._query("SELECT status, pid, host FROM runs WHERE id=?", (key,))
        if not rows:
            raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
        return _executing(*rows[0])

    def delete_run(self, run_id: int, *, force: bool = False) -> None:
        """Remove a run and its results.

        Raises StoreError when there is no such run, and RunBusy (a StoreError, nothing deleted)
        while a live process executes it (see ``executing``), unless ``force``: cancel it first
        (``request_cancel``) and delete it once it has stopped.
        """
        key = _run_key(run_id)
        with self._write() as c:
            row = None if key is None else c.execute(
                "SELECT name, status, pid, host FROM runs WHERE id=?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
            name, status, pid, host = row
            if not force and _executing(status, pid, host):
                where = "" if host == socket.gethostname() else f" on {host}"
                raise RunBusy(f"run {key} ({quote(name)}) is being certified by process {pid}{where}; "
                              "cancel it and wait until it has stopped", key)
            c.execute("DELETE FROM results WHERE run_id=?", (key,))
            c.execute("DELETE FROM runs WHERE id=?", (key,))

    def rename_run(self, run_id: int, name: str) -> str:
        """Give the run a new name and return it (blanks around it removed).

        Raises InvalidArgument for a name ``check_run_name`` refuses, RunNameTaken (an
        InvalidArgument carrying ``run_id`` of the holder) when another run has that name, and
        StoreError when there is no such run. The run's ``updated`` time is left as it is. A
        renamed certify run is no longer resumed by rerunning the command with its old name.
        """
        cleaned = check_run_name(name)
        key = _run_key(run_id)
        with self._write() as c:
            if key is None or c.execute("SELECT 1 FROM runs WHERE id=?", (key,)).fetchone() is None:
                raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
            other = c.execute("SELECT id FROM runs WHERE name=? AND id<>? ORDER BY id LIMIT 1",
                              (cleaned, key)).fetchone()
            if other is not None:
                raise RunNameTaken(f"run name {quote(cleaned)} is already used by run {other[0]}",
                                   cleaned, int(other[0]))
            c.execute("UPDATE runs SET name=? WHERE id=?", (cleaned, key))
        return cleaned

    # ---------------------------------------------------------------- results
    def add_result(self, run_id: int, result: Any) -> None:
        """Commit one point's result now; a point already stored for the run is kept as it is.

        A result carrying ``stop_reason`` (a sequential point) also writes its SEQUENTIAL_COLUMNS
        to ``sequential_results``, in the same transaction; its run must be a sequential one.
        """
        d = _to_row(result)
        now = time.time()
        counts = d.get("counts")
        extra = _sequential_row(d)
        if extra is not None and self._settings_text(int(run_id)) is None:
            raise InvalidArgument(f"run {run_id} is not a sequential run; its results carry no stop_reason")
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO results (run_id, idx, label, predict, correct, p_a_lower,"
                " sigma, radius, naive_radius, counts, seconds, created)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    int(run_id), int(d["idx"]), int(d["label"]), int(d["predict"]),
                    int(bool(d["correct"])), _opt_float(d.get("p_a_lower")),
                    _opt_float(d.get("sigma")), float(d["radius"]), _opt_float(d.get("naive_radius")),
                    None if counts is None else json.dumps([int(v) for v in counts]),
                    _opt_float(d.get("seconds")), now,
                ),
            )
            if extra is not None:
                c.execute(
                    f"INSERT OR IGNORE INTO sequential_results (run_id, idx, {', '.join(SEQUENTIAL_COLUMNS)})"
                    f" VALUES ({', '.join('?' * (2 + len(SEQUENTIAL_COLUMNS)))})",
                    (int(run_id), int(d["idx"]), *extra),
                )
            c.execute("UPDATE runs SET updated=? WHERE id=?", (now, int(run_id)))

    def results(self, run_id: int) -> pd.DataFrame:
        """Per-point results of a run, ordered by idx (``correct`` bool, ``counts`` list).

        A sequential run's frame has SEQUENTIAL_COLUMNS after RESULT_COLUMNS (``samples``: the
        estimation samples the point used; ``selection``: its selection samples); a fixed-n
        run's has RESULT_COLUMNS only.
        """
        import pandas as pd

        sequential = self._settings_text(int(run_id)) is not None
        columns = RESULT_COLUMNS + (SEQUENTIAL_COLUMNS if sequential else [])
        extra = "".join(f", s.{c}" for c in SEQUENTIAL_COLUMNS) if sequential else ""
        join = " LEFT JOIN sequential_results s USING (run_id, idx)" if sequential else ""
        rows = self._query(
            "SELECT idx, label, predict, correct, p_a_lower, sigma, radius, naive_radius, counts,"
            f" seconds{extra} FROM results{join} WHERE run_id=? ORDER BY idx",
            (int(run_id),),
        )
        df = pd.DataFrame(rows, columns=columns)
        df["correct"] = df["correct"].astype(bool)
        for col in ("idx", "label", "predict"):
            df[col] = df[col].astype("int64")
        for col in ("p_a_lower", "sigma", "radius", "naive_radius", "seconds"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        df["counts"] = [None if c is None else json.loads(c) for c in df["counts"]]
        if sequential:
            for col in ("samples", "selection", "class_a", "votes_a", "checkpoints"):
                df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
            df["p_a_upper"] = pd.to_numeric(df["p_a_upper"], errors="coerce").astype("float64")
            df["stop_reason"] = df["stop_reason"].astype(object)
        return df

    def sample_counts(self, run_id: int) -> list[int] | None:
        """Samples (selection + estimation) each stored point of the run used, ordered by idx.

        Sequential runs: as recorded per point; fixed-n runs: n0 + n for every point; None when
        the run does not say (an imported log without n).
        """
        key = _run_key(run_id)
        if key is not None and self._settings_text(key) is not None:
            rows = self._query("SELECT s.selection + s.samples FROM results r JOIN sequential_results s"
                               " USING (run_id, idx) WHERE r.run_id=? ORDER BY r.idx", (key,))
            return [int(v) for (v,) in rows]
        info = self.run(run_id)
        if info["n"] is None:
            return None
        return [int(info["n0"] or 0) + int(info["n"])] * int(info["done"])

    def set_in_flight(self, run_id: int, pool: Mapping[str, Sequence[Any]]) -> None:
        """Replace the run's in-flight rows by ``pool`` in one transaction.

        ``pool`` holds one list per IN_FLIGHT_FIELDS, a point per position (the sequential
        engine's progress ``pool``); an empty pool leaves none. Cheap enough to call every few
        seconds while a run executes: one DELETE and one batched INSERT.
        """
        missing = [f for f in IN_FLIGHT_FIELDS if f not in pool]
        if missing:
            raise InvalidArgument(f"in-flight rows: lack {', '.join(missing)}")
        columns = [list(pool[f]) for f in IN_FLIGHT_FIELDS]
        if len({len(c) for c in columns}) > 1:
            raise InvalidArgument("in-flight rows: the fields hold different numbers of points")
        now = time.time()
        rows = [(int(run_id), int(i), int(t), float(lo), float(up), _opt_float(s), _opt_int(a), _opt_int(y), now)
                for i, t, lo, up, s, a, y in zip(*columns)]
        key = _run_key(run_id)
        with self._write() as c:
            if key is None or c.execute("SELECT 1 FROM runs WHERE id=?", (key,)).fetchone() is None:
                raise StoreError(f"run {quote(str(run_id))} not found in {self.path}")
            c.execute(_IN_FLIGHT_SCHEMA)
            c.execute("DELETE FROM sequential_in_flight WHERE run_id=?", (key,))
            c.executemany(f"INSERT INTO sequential_in_flight (run_id, {', '.join(IN_FLIGHT_FIELDS)}, updated)"
                          f" VALUES ({', '.join('?' * (len(IN_FLIGHT_FIELDS) + 2))})", rows)

    def in_flight(self, run_id: int) -> pd.DataFrame:
        """The run's in-flight rows (IN_FLIGHT_FIELDS and ``updated``, the time they were
        written), ordered by idx; empty when nothing of the run is being sampled."""
        import pandas as pd

        columns = [*IN_FLIGHT_FIELDS, "updated"]
        key = _run_key(run_id)
        rows = [] if key is None or not self._has_table("sequential_in_flight") else self._query(
            f"SELECT {', '.join(columns)} FROM sequential_in_flight WHERE run_id=? ORDER BY idx", (key,))
        df = pd.DataFrame(rows, columns=columns)
        for col in ("idx", "samples"):
            df[col] = df[col].astype("int64")
        for col in ("class_a", "label"):
            df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], dtype="Int64")
        for col in ("lower", "upper", "sigma", "updated"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return df

    def done_indices(self, run_id: int) -> set[int]:
        """Indices of the points already stored for the run."""
        return {int(r[0]) for r in self._query("SELECT idx FROM results WHERE run_id=?", (int(run_id),))}

    def progress(self, run_id: int) -> dict:
        """done, total, status, started, updated, rate_per_s (this session), eta_s."""
        info = self.run(run_id)
        started, updated = info["started"], info["updated"]
        rate = eta = None
        if started is not None:
            recent = self._query(
                "SELECT COUNT(*) FROM results WHERE run_id=? AND created>=?", (int(run_id), started)
            )[0][0]
            end = time.time() if info["status"] == "running" else (info["finished"] or updated)
            elapsed = (end or started) - started
            if recent and elapsed > 0:
                rate = recent / elapsed
                eta = (info["total"] - info["done"]) / rate
        return {
            "done": info["done"], "total": info["total"], "status": info["status"],
            "started": _iso(started), "updated": _iso(updated), "rate_per_s": rate, "eta_s": eta,
            "message": info["message"],
        }

    def integrity_check(self) -> str:
        """SQLite's own integrity check ("ok" when the file is sound)."""
        return str(self._query("PRAGMA integrity_check")[0][0])

    # ---------------------------------------------------------------- sweeps
    def create_sweep(self, name: str, identity: Mapping[str, Any], config: Mapping[str, Any],
                     cells: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> int:
        """Record a sweep (status pending) and its child runs in one transaction; returns its id.

        ``identity``: what makes two sweeps the same (``find_sweep``); ``config``: what it records
        to show and resume; ``cells``: per grid cell, in grid order, (its parameters, its run as
        ``create_run``'s keyword arguments). All or nothing: a refused cell writes no sweep.
        """
        cleaned = check_run_name(name)
        made = [(dict(cell), self._new_run(**run)) for cell, run in cells]
        if not made:
            raise InvalidArgument("sweep: no cell to record")
        now = time.time()
        with self._write() as c:
            for stmt in _SWEEP_SCHEMA.strip().split(";"):
                c.execute(stmt)
            cur = c.execute("INSERT INTO sweeps (name, created, identity, config, status, updated)"
                            " VALUES (?, ?, ?, ?, 'pending', ?)", (cleaned, now, _json(identity), _json(config), now))
            sweep_id = int(cur.lastrowid)
            for position, (cell, (fields, settings)) in enumerate(made):
                run_id = self._add_run(c, fields, settings)
                c.execute("INSERT INTO sweep_runs (sweep_id, position, cell, run_id) VALUES (?, ?, ?, ?)",
                          (sweep_id, position, _json(cell), run_id))
        return sweep_id

    def replace_sweep_run(self, sweep_id: int, position: int, run: Mapping[str, Any]) -> int:
        """Create the run of a cell whose run was deleted (``create_run``'s keyword arguments); its id.

        StoreError when the cell does not exist or still has its run.
        """
        fields, settings = self._new_run(**run)
        with self._write() as c:
            row = None if not self._has_table("sweep_runs") else c.execute(
                "SELECT run_id FROM sweep_runs WHERE sweep_id=? AND position=?", (int(sweep_id), int(position))
            ).fetchone()
            if row is None:
                raise StoreError(f"sweep {sweep_id} has no cell {position} in {self.path}")
            if row[0] is not None:
                raise StoreError(f"cell {position} of sweep {sweep_id} still has its run {row[0]}")
            run_id = self._add_run(c, fields, settings)
            c.execute("UPDATE sweep_runs SET run_id=? WHERE sweep_id=? AND position=?",
                      (run_id, int(sweep_id), int(position)))
        return run_id

    def find_sweep(self, identity: Mapping[str, Any]) -> int | None:
        """The newest sweep recorded with exactly this identity (to resume it), else None."""
        if not self._has_table("sweeps"):
            return None
        rows = self._query("SELECT id FROM sweeps WHERE identity=? ORDER BY id DESC LIMIT 1", (_json(identity),))
        return int(rows[0][0]) if rows else None

    def _sweep_key(self, sweep_id: object) -> int:
        key = _run_key(sweep_id)
        if key is None or not self._has_table("sweeps") or not self._query("SELECT 1 FROM sweeps WHERE id=?", (key,)):
            raise StoreError(f"sweep {quote(str(sweep_id))} not found in {self.path}")
        return key

    def sweep(self, sweep_id: int) -> dict:
        """The sweep's record (identity and config decoded, effective status) with ``cells``: per
        grid cell in order, its ``position``, parameters (``cell``), ``run_id`` (None once deleted)
        and that run's ``status``, ``done`` and ``total``; ``done``/``total`` sum the points of its
        runs, ``runs_done`` counts its finished runs."""
        key = self._sweep_key(sweep_id)
        row = self._query(f"SELECT {', '.join(_SWEEP_COLUMNS)} FROM sweeps WHERE id=?", (key,))[0]
        d = dict(zip(_SWEEP_COLUMNS, row))
        d["identity"], d["config"] = json.loads(d["identity"]), json.loads(d["config"])
        d["pid"] = _opt_int(d["pid"])
        d["status"] = _effective_status(d["status"], d["pid"], d["host"])
        d["cancel"] = bool(d["cancel"])
        cells = []
        for position, cell, run_id, status, pid, host, total, done in self._query(
            "SELECT w.position, w.cell, w.run_id, r.status, r.pid, r.host, r.total,"
            " (SELECT COUNT(*) FROM results s WHERE s.run_id = w.run_id)"
            " FROM sweep_runs w LEFT JOIN runs r ON r.id = w.run_id WHERE w.sweep_id=? ORDER BY w.position", (key,)
        ):
            cells.append({"position": int(position), "cell": json.loads(cell),
                          "run_id": None if run_id is None else int(run_id),
                          "status": None if status is None else _effective_status(status, _opt_int(pid), host),
                          "done": int(done or 0), "total": int(total or 0)})
        d["cells"] = cells
        d["done"] = sum(c["done"] for c in cells)
        d["total"] = sum(c["total"] for c in cells)
        d["runs_done"] = sum(c["status"] == "done" and c["done"] == c["total"] for c in cells)
        return d

    def sweeps(self) -> list[dict]:
        """Every sweep's record (as ``sweep``), newest first; empty for a store without sweeps."""
        if not self._has_table("sweeps"):
            return []
        return [self.sweep(int(r[0])) for r in self._query("SELECT id FROM sweeps ORDER BY id DESC")]

    def sweep_of_run(self, run_id: int) -> int | None:
        """The sweep a run belongs to, or None."""
        if not self._has_table("sweep_runs"):
            return None
        rows = self._query("SELECT sweep_id FROM sweep_runs WHERE run_id=?", (int(run_id),))
        return int(rows[0][0]) if rows else None

    def set_sweep_status(self, sweep_id: int, status: str, message: str = "") -> None:
        """Set the sweep's status; "running" also records this process (pid, host), the start, and
        clears its cancel flag."""
        if status not in STATUSES:
            raise InvalidArgument(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        key = self._sweep_key(sweep_id)
        now = time.time()
        with self._write() as c:
            if status == "running":
                c.execute("UPDATE sweeps SET status=?, message=?, pid=?, host=?, started=?, updated=?, finished=NULL,"
                          " cancel=0 WHERE id=?", (status, message, os.getpid(), socket.gethostname(), now, now, key))
            else:
                finished = now if status in ("done", "cancelled", "failed", "interrupted") else None
                c.execute("UPDATE sweeps SET status=?, message=?, updated=?, finished=? WHERE id=?",
                          (status, message, now, finished, key))

    def request_sweep_cancel(self, sweep_id: int) -> None:
        """Ask the process executing the sweep to stop: its current run stops after the batch in
        flight (the runs' own cancel flag) and no further run starts."""
        key = self._sweep_key(sweep_id)
        with self._write() as c:
            c.execute("UPDATE sweeps SET cancel=1 WHERE id=?", (key,))
            c.execute("UPDATE runs SET cancel=1 WHERE status<>'done' AND id IN"
                      " (SELECT run_id FROM sweep_runs WHERE sweep_id=?)", (key,))

    def sweep_cancel_requested(self, sweep_id: int) -> bool:
        """Whether cancellation was requested for the sweep."""
        rows = self._query("SELECT cancel FROM sweeps WHERE id=?", (self._sweep_key(sweep_id),))
        return bool(rows and rows[0][0])

    def sweep_executing(self, sweep_id: int) -> bool:
        """Whether a live process is executing the sweep (as ``executing`` for a run)."""
        row = self._query("SELECT status, pid, host FROM sweeps WHERE id=?", (self._sweep_key(sweep_id),))[0]
        return _executing(*row)

    # ---------------------------------------------------------------- side tables
    def _has_table(self, name: str) -> bool:
        """Whether a side table exists (they are created when first needed)."""
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))

    def _world_sizes(self) -> dict[int, int]:
        """Run id -> processes, for the runs whose last execution spanned several."""
        if not self._has_table("run_ranks"):
            return {}
        return {int(r): int(w) for r, w in self._query("SELECT run_id, world_size FROM run_ranks")}

    @staticmethod
    def _world_size(run_id: int, kind: str, started: float | None, sizes: Mapping[int, int]) -> int | None:
        """Processes of the run's last execution: its recorded number, else 1 once it has run."""
        if kind != "certify" or started is None:
            return None
        return sizes.get(int(run_id), 1)

    def _has_sequential(self) -> bool:
        """Whether the side tables exist (a store that never held a sequential run has none)."""
        return self._has_table("sequential_runs")

    def _settings_text(self, run_id: int | None) -> str | None:
        """The run's sequential settings as stored (JSON), None for a fixed-n run."""
        if run_id is None or not self._has_sequential():
            return None
        rows = self._query("SELECT settings FROM sequential_runs WHERE run_id=?", (int(run_id),))
        return rows[0][0] if rows else None

    def _all_settings(self) -> list[tuple[int, str]]:
        """(run id, settings JSON) of every sequential run."""
        if not self._has_sequential():
            return []
        return [(int(r), str(t)) for r, t in self._query("SELECT run_id, settings FROM sequential_runs")]

# -------------------------------------------------------------------- Cohen log format
# str(datetime.timedelta): "[D day[s], ]H:MM:SS[.ffffff]" (the reference code's time column)
_TIMEDELTA = re.compile(r"(?:([0-9]{1,9}) days?, )?([0-9]{1,9}):([0-5][0-9]):([0-5][0-9](?:\.[0-9]{1,9})?)")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SIGMA_TEXT_MAX = 200
_TIME_MAX = dt.timedelta.max.total_seconds() - 1.0  # what str(timedelta) can write back


def parse_log_time(text: str) -> float:
    """Seconds from ``12.5`` or ``str(datetime.timedelta)`` such as ``0:00:01.234567``."""
    text = text.strip()
    m = _TIMEDELTA.fullmatch(text)
    if m:
        days = int(m.group(1) or 0)
        return days * 86400 + int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"time {quote(text)} is neither seconds nor h:mm:ss.ffffff") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time {quote(text)} is not a non-negative number")
    if value > _TIME_MAX:
        raise ValueError(f"time {quote(text)} is more than {_TIME_MAX:.0f} seconds (999999999 days)")
    return value


def _log_time(seconds: float | None) -> str:
    """The time column as the reference code writes it, str(timedelta) (0 when unknown)."""
    value = 0.0 if seconds is None or not math.isfinite(seconds) or seconds < 0 else min(float(seconds), _TIME_MAX)
    return str(dt.timedelta(seconds=value))


@dataclasses.dataclass(frozen=True)
class CohenLog:
    """A parsed reference-code log: its rows, the SHA-256 of its bytes, the name messages use.

    ``rows`` holds (idx, label, predict, radius, correct, seconds) per result line.
    """

    source: str
    sha256: str
    rows: list[tuple[int, int, int, float, bool, float]]


LogSource = str | Path | bytes | IO[bytes] | IO[str]


@contextlib.contextmanager
def _log_stream(source: LogSource, source_name: str | None) -> Iterator[tuple[IO, str]]:
    """(file object, name for messages); a path must be a regular file (a FIFO would block)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source)), source_name or "uploaded log"
        return
    if hasattr(source, "readline"):
        yield source, source_name or str(getattr(source, "name", "") or "uploaded log")  # type: ignore[misc]
        return
    path = Path(source)  # type: ignore[arg-type]
    where = source_name or str(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise LogFormatError(f"{where}: file not found") from None
    except (OSError, ValueError) as exc:
        raise LogFormatError(f"{quote(where)}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise LogFormatError(f"{where}: is a directory, not a log file")
    if stat.S_ISFIFO(st.st_mode):
        raise LogFormatError(f"{where}: is a named pipe (FIFO), not a regular file; save the log to a file first")
    if not stat.S_ISREG(st.st_mode):
        raise LogFormatError(f"{where}: is a device or special file, not a regular file")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise LogFormatError(f"{where}: cannot be opened ({exc.strerror})") from None
    with f:
        yield f, where


def _log_lines(f: IO, where: str, digest: Any) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, read one at a time (never more than LOG_LINE_MAX + 1
    characters at once); every byte read goes into ``digest``."""
    number = 0
    while True:
        try:
            raw = f.readline(LOG_LINE_MAX + 1)
        except UnicodeDecodeError as exc:
            raise LogFormatError(f"{where}: line {number + 1}: cannot read as UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise LogFormatError(f"{where}: reading failed ({exc.strerror or exc})") from None
        if not raw:
            return
        number += 1
        binary = isinstance(raw, (bytes, bytearray))
        digest.update(raw if binary else raw.encode("utf-8", "surrogatepass"))
        if len(raw) > LOG_LINE_MAX and raw[-1:] not in (b"\n", "\n"):
            raise LogFormatError(f"{where}: line {number}: longer than {LOG_LINE_MAX} characters, "
                                 "not a line of the tab-separated log format")
        if binary:
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LogFormatError(f"{where}: line {number}: cannot read as UTF-8 text "
                                     f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
        yield number, raw


def _log_int(text: str, what: str, low: int, high: int, at: str, note: str = "") -> int:
    t = text.strip()
    if not _INTEGER.fullmatch(t):
        raise LogFormatError(f"{at}: {what} {quote(text)} is not an integer")
    value = int(t) if len(t) <= 20 else None  # 20 characters hold any sign and 64-bit value
    if value is None or not low <= value <= high:
        shown = quote(t) if value is None else value
        raise LogFormatError(f"{at}: {what} {shown} is outside {note or f'[{low}, {high}]'}")
    return value


def _log_row(line: str, at: str, label_max: int, note: str) -> tuple[int, int, int, float, bool, float]:
    """One result line checked on its own: types, ranges, and the fields agreeing with each other
    (the reference code writes correct = int(predict == label) and radius 0 when it abstains)."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 6:
        raise LogFormatError(f"{at}: expected 6 tab-separated fields, got {len(fields)}")
    idx = _log_int(fields[0], "idx", 0, INDEX_MAX, at)
    label = _log_int(fields[1], "label", 0, label_max, at, note)
    predict = _log_int(fields[2], "predict", -1, label_max, at, note and f"-1 (abstain) and {note}")
    try:
        radius = float(fields[3])
    except ValueError:
        raise LogFormatError(f"{at}: radius {quote(fields[3])} is not a number") from None
    if not (math.isfinite(radius) and radius >= 0):
        raise LogFormatError(f"{at}: radius {quote(fields[3])} must be finite and >= 0")
    if fields[4].strip() not in ("0", "1"):
        raise LogFormatError(f"{at}: correct must be 0 or 1, got {quote(fields[4])}")
    correct = fields[4].strip() == "1"
    try:
        seconds = parse_log_time(fields[5])
    except ValueError as exc:
        raise LogFormatError(f"{at}: {exc}") from None
    if predict == -1 and radius > 0:
        raise LogFormatError(f"{at}: predict -1 (abstain) with radius {radius!r}; an abstention has radius 0")
    if correct and predict != label:
        raise LogFormatError(f"{at}: correct = 1 but predict {predict} differs from label {label}")
    if not correct and predict == label:
        raise LogFormatError(f"{at}: correct = 0 but predict equals label {label}")
    return idx, label, predict, radius, correct, seconds


def parse_cohen_log(source: LogSource, *, source_name: str | None = None,
                    num_classes: int | None = None) -> CohenLog:
    """Read and check a reference-code log, streaming it line by line; LogFormatError names the line.

    ``source`` is a path (it must be a regular file), bytes, or a binary or text file object;
    ``source_name`` is what every message calls it (the dashboard passes the upload's file name),
    by default the path or the file object's name. ``num_classes`` (the dataset's) bounds the
    labels and predictions. Blank lines are skipped; no field is quoted beyond a few dozen
    characters.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
        raise InvalidArgument(f"num_classes {num_classes!r} must be an integer >= 1")
    label_max = INDEX_MAX if num_classes is None else int(num_classes) - 1
    note = "" if num_classes is None else f"the dataset's classes 0 to {label_max}"
    digest = hashlib.sha256()
    rows: list[tuple[int, int, int, float, bool, float]] = []
    seen: set[int] = set()
    with _log_stream(source, source_name) as (f, where):
        lines = _log_lines(f, where, digest)
        first = next(lines, None)
        header = None if first is None else first[1].lstrip("\ufeff").strip().split("\t")
        if header != COHEN_HEADER:
            got = "an empty file" if first is None else quote(first[1].rstrip("\r\n"))
            raise LogFormatError(
                f"{where}: line 1: expected the tab-separated header {' '.join(COHEN_HEADER)!r}, got {got}"
            )
        for number, line in lines:
            if not line.strip():
                continue
            at = f"{where}: line {number}"
            row = _log_row(line, at, label_max, note)
            if row[0] in seen:
                raise LogFormatError(f"{at}: idx {row[0]} appears twice")
            seen.add(row[0])
            rows.append(row)
    if not rows:
        raise LogFormatError(f"{where}: no result lines after the header")
    return CohenLog(where, digest.hexdigest(), rows)


def read_cohen_log(source: LogSource, *, source_name: str | None = None,
                   num_classes: int | None = None) -> pd.DataFrame:
    """The log as a data frame (idx, label, predict, radius, correct, seconds); see ``parse_cohen_log``."""
    import pandas as pd

    log = parse_cohen_log(source, source_name=source_name, num_classes=num_classes)
    return pd.DataFrame(log.rows, columns=["idx", "label", "predict", "radius", "correct", "seconds"])


def import_sigma(sigma: str | float | None) -> tuple[str | None, dict, float | None, float | None]:
    """(spec, params, per-point sigma or None, r) for the sigma of an imported log: a number or a
    spec (``constant:0.25``, ``knn:...``, ``ddrs:...`` whose r is None), checked as
    ``smoothviz.sigma.parse_sigma_spec`` does."""
    if sigma is None or (isinstance(sigma, str) and not sigma.strip()):
        return None, {}, None, 0.0
    from smoothviz.sigma import parse_sigma_spec

    text = str(sigma).strip()
    if len(text) > _SIGMA_TEXT_MAX:
        raise InvalidArgument(f"sigma {quote(text)} is not a number or sigma spec")
    try:
        float(text)
    except ValueError:
        params = parse_sigma_spec(text)
    else:
        params = parse_sigma_spec(f"constant:{text}")
    if params["kind"] == "constant":
        value = float(params["sigma"])
        return f"constant:{value:g}", params, value, 0.0
    from smoothviz.sigma import semi_elasticity

    return text, params, None, semi_elasticity(params)


def import_cohen_log(
    store: Store,
    source: LogSource | CohenLog,
    name: str,
    dataset: str,
    sigma: str | float | None = None,
    *,
    n: int | None = None,
    alpha: float | None = None,
    num_classes: int | None = None,
    source_name: str | None = None,
) -> int:
    """Import a reference-code certification log as a finished run; returns the new run id.

    ``source``: a path, bytes, a binary or text file object (see ``parse_cohen_log``), or a
    CohenLog already parsed. The run and all its rows are written in one transaction (all or
    nothing, fast); its options record the source name and the file's SHA-256. The log has no
    p_A or counts; ``sigma`` (a number or spec) fills the per-point sigma for a constant sigma, and
    the logged radius is both the radius and the naive radius.

    Raises LogFormatError (the file or a line), InvalidArgument (name, sigma, n, alpha),
    RunNameTaken (``.run_id`` already has the name), DuplicateImport (the same bytes were imported
    as ``.run_id``) and StoreError; nothing is written then.
    """
    cleaned = check_run_name(name)
    spec, params, sigma_value, r = import_sigma(sigma)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= ID_MAX):
        raise InvalidArgument(f"n {n!r} must be a sample count (an integer >= 1)")
    if alpha is not None and not 0.0 < float(alpha) < 1.0:
        raise InvalidArgument(f"alpha {alpha!r} is outside (0, 1)")
    log = source if isinstance(source, CohenLog) else parse_cohen_log(
        source, source_name=source_name, num_classes=num_classes)
    now = time.time()
    with store._write() as c:
        # the same bytes first: importing a file again under its default name is a duplicate, not a name clash
        for run_id, run_name, options in c.execute("SELECT id, name, options FROM runs WHERE kind='import'").fetchall():
            try:
                recorded = json.loads(options).get("sha256")
            except (ValueError, AttributeError):
                recorded = None
            if recorded == log.sha256:
                raise DuplicateImport(f"{log.source}: the same file was already imported as run {run_id} "
                                      f"({quote(run_name)})", int(run_id))
        taken = c.execute("SELECT id FROM runs WHERE name=? ORDER BY id LIMIT 1", (cleaned,)).fetchone()
        if taken is not None:
            raise RunNameTaken(f"run name {quote(cleaned)} is already used by run {taken[0]}; choose another name",
                               cleaned, int(taken[0]))
        run_id = store._insert_run(c, {
            "name": cleaned, "kind": "import", "created": now, "dataset": dataset, "split": "test",
            "sigma_spec": spec, "sigma_params": _json(params), "r": r, "n0": None, "n": n,
            "alpha": None if alpha is None else float(alpha), "indices": _json([row[0] for row in log.rows]),
            "total": len(log.rows), "options": _json({"imported_from": log.source, "sha256": log.sha256}),
            "status": "done", "message": f"imported from {Path(log.source).name}", "started": now,
            "updated": now, "finished": now,
        })
        c.executemany(
            "INSERT INTO results (run_id, idx, label, predict, correct, p_a_lower, sigma, radius,"
            " naive_radius, counts, seconds, created) VALUES (?,?,?,?,?,NULL,?,?,?,NULL,?,?)",
            ((run_id, idx, label, predict, int(correct), sigma_value, radius, radius, seconds, now)
             for idx, label, predict, radius, correct, seconds in log.rows),
        )
    return run_id


@contextlib.contextmanager
def _text_out(target: str | Path | IO[str]) -> Iterator[IO[str]]:
    """A file object as it is, or a path written atomically (``smoothviz.outputs``)."""
    if hasattr(target, "write"):
        yield target  # type: ignore[misc]
    else:
        with atomic_output(target, "w") as f:
            yield f


def export_cohen_log(store: Store, run_id: int, path: str | Path | IO[str]) -> None:
    """Write the run in the reference code's log format (time as h:mm:ss.ffffff)."""
    df = store.results(run_id)
    with _text_out(path) as f:
        f.write("\t".join(COHEN_HEADER) + "\n")
        for row in df.itertuples(index=False):
            f.write(f"{row.idx}\t{row.label}\t{row.predict}\t{float(row.radius)!r}\t{int(row.correct)}\t"
                    f"{_log_time(row.seconds)}\n")


def export_csv(store: Store, run_id: int, path: str | Path | IO[str]) -> None:
    """Write the run's per-point results as CSV (counts as a JSON list)."""
    df = store.results(run_id)
    df["counts"] = [None if c is None else json.dumps(c) for c in df["counts"]]
    with _text_out(path) as f:
        df.to_csv(f, index=False, lineterminator="\n")
