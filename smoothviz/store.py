"""SQLite results store: runs and per-point certification results, Cohen-log import/export, CSV.

One ``runs`` row per certification (its full configuration, status and process) and one
``results`` row per certified point, committed in its own transaction as soon as the point is
done. ``PRIMARY KEY (run_id, idx)`` plus ``INSERT OR IGNORE`` means a resumed run never
duplicates a point; WAL mode and a busy timeout let several processes write at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

from smoothviz.errors import InvalidArgument, LogFormatError, StoreError
from smoothviz.processes import pid_alive

DEFAULT_DB = Path("runs/smoothviz.db")
DB_ENV = "SMOOTHVIZ_DB"
SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "done", "cancelled", "failed", "interrupted")
RESULT_COLUMNS = [
    "idx", "label", "predict", "correct", "p_a_lower", "sigma", "radius", "naive_radius",
    "counts", "seconds",
]
COHEN_HEADER = ["idx", "label", "predict", "radius", "correct", "time"]

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

_RUN_COLUMNS = (
    "id", "name", "kind", "created", "dataset", "split", "checkpoint", "checkpoint_sha256",
    "sigma_spec", "sigma_params", "r", "n0", "n", "alpha", "device", "indices", "total", "seed",
    "batch_size", "options", "status", "message", "cancel", "pid", "host", "started", "updated",
    "finished",
)


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


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


class Store:
    """The results database; one connection per Store, safe to share between threads."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        """Open the database at ``path`` (default: ``default_db()``).

        ``create=False`` (reading verbs) refuses a missing file instead of creating an empty store.
        Missing parent folders are created only for the default location; elsewhere a missing
        folder is a one-line error, so a mistyped path never leaves directories behind.
        """
        self.path = Path(path) if path is not None else default_db()
        self._lock = threading.RLock()
        if self.path.exists() and not self.path.is_file():
            kind = "a directory" if self.path.is_dir() else "not a regular file"
            raise StoreError(f"database {self.path}: is {kind}")
        if not self.path.exists():
            if not create:
                raise StoreError(f"no results store at {self.path} (nothing has been certified or imported there)")
            if not self.path.parent.is_dir():
                if self.path.parent.exists():
                    raise StoreError(f"database {self.path}: {self.path.parent} is not a folder")
                if self.path.resolve() != default_db().resolve():
                    raise StoreError(f"database {self.path}: folder {self.path.parent} does not exist")
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"database {self.path}: cannot create {self.path.parent} ({exc.strerror})") from None
        try:
            self._conn = sqlite3.connect(
                str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"database {self.path}: cannot open ({exc})") from None
        try:
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA foreign_keys = ON")
            with contextlib.suppress(sqlite3.OperationalError):
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"database {self.path}: not a readable smoothviz database ({exc})") from None

    # ---------------------------------------------------------------- plumbing
    def _init_schema(self) -> None:
        with self._write() as c:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
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
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.DatabaseError as exc:
                    raise StoreError(f"database {self.path}: {exc}") from None

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
    ) -> int:
        """Record a new run (status pending) and return its id."""
        indices = [int(i) for i in indices]
        if len(set(indices)) != len(indices):
            raise InvalidArgument("indices: contains duplicates")
        if checkpoint is not None and checkpoint_sha256 is None:
            checkpoint_sha256 = file_sha256(checkpoint)
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO runs (name, kind, created, dataset, split, checkpoint, checkpoint_sha256,"
                " sigma_spec, sigma_params, r, n0, n, alpha, device, indices, total, seed, batch_size,"
                " options, status, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'pending',?)",
                (
                    name, kind, now, dataset, split,
                    None if checkpoint is None else str(checkpoint), checkpoint_sha256,
                    sigma_spec, _json(sigma_params or {}), None if r is None else float(r),
                    n0, n, None if alpha is None else float(alpha), device, _json(indices),
                    len(indices), seed, batch_size, _json(options or {}), now,
                ),
            )
            return int(cur.lastrowid)

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
        **_ignored: Any,
    ) -> int | None:
        """The newest certify run with this exact configuration (to resume it), else None.

        The batch size is not part of the identity: noise is drawn per point and per block, so
        it does not change the counts. The device counts by type only (cpu vs cuda streams).
        """
        if checkpoint is not None and checkpoint_sha256 is None:
            checkpoint_sha256 = file_sha256(checkpoint)
        rows = self._query(
            "SELECT id, device FROM runs WHERE kind='certify' AND name=? AND dataset=? AND split=?"
            " AND checkpoint IS ? AND checkpoint_sha256 IS ? AND sigma_spec IS ? AND n0 IS ?"
            " AND n IS ? AND alpha IS ? AND indices=? AND seed IS ? AND options=? ORDER BY id DESC",
            (
                name, dataset, split, None if checkpoint is None else str(checkpoint),
                checkpoint_sha256, sigma_spec, n0, n, None if alpha is None else float(alpha),
                _json([int(i) for i in indices]), seed, _json(options or {}),
            ),
        )
        want = (device or "").split(":")[0]
        for run_id, dev in rows:
            if (dev or "").split(":")[0] == want:
                return int(run_id)
        return None

    def _effective_status(self, status: str, pid: int | None, host: str | None) -> str:
        if status == "running" and pid is not None and host == socket.gethostname() and not pid_alive(pid):
            return "interrupted"
        return status

    def run(self, run_id: int) -> dict:
        """The run's configuration and state as a dict (json fields decoded, done count added)."""
        rows = self._query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id=?", (int(run_id),))
        if not rows:
            raise StoreError(f"run {run_id} not found in {self.path}")
        d = dict(zip(_RUN_COLUMNS, rows[0]))
        for key in ("sigma_params", "indices", "options"):
            d[key] = json.loads(d[key])
        d["status"] = self._effective_status(d["status"], d["pid"], d["host"])
        done, sigma_max, seconds = self._query(
            "SELECT COUNT(*), MAX(sigma), SUM(seconds) FROM results WHERE run_id=?", (int(run_id),)
        )[0]
        d["done"] = int(done)
        d["sigma_max"] = sigma_max
        d["seconds"] = seconds or 0.0
        return d

    def runs(self) -> pd.DataFrame:
        """One row per run with done/total counts and effective status, newest first."""
        rows = self._query(
            "SELECT r.id, r.name, r.kind, r.dataset, r.split, r.checkpoint, r.sigma_spec, r.r, r.n0,"
            " r.n, r.alpha, r.device, r.seed, r.batch_size, r.status, r.message, r.pid, r.host,"
            " r.total, r.created, r.updated,"
            " (SELECT COUNT(*) FROM results s WHERE s.run_id = r.id),"
            " (SELECT COALESCE(SUM(seconds), 0) FROM results s WHERE s.run_id = r.id)"
            " FROM runs r ORDER BY r.id DESC"
        )
        cols = [
            "id", "name", "kind", "dataset", "split", "checkpoint", "sigma_spec", "r", "n0", "n",
            "alpha", "device", "seed", "batch_size", "status", "message", "pid", "host", "total",
            "created", "updated", "done", "seconds",
        ]
        df = pd.DataFrame(rows, columns=cols)
        if len(df):
            df["status"] = [
                self._effective_status(s, p, h) for s, p, h in zip(df["status"], df["pid"], df["host"])
            ]
            df["created"] = [_iso(t) for t in df["created"]]
            df["updated"] = [_iso(t) for t in df["updated"]]
        order = [
            "id", "name", "kind", "dataset", "split", "status", "done", "total", "sigma_spec", "r",
            "n0", "n", "alpha", "device", "seed", "batch_size", "checkpoint", "seconds", "created",
            "updated", "message",
        ]
        return df[order]

    def resolve_run(self, ref: str | int) -> int:
        """A run id from an id or a unique run name."""
        text = str(ref).strip()
        if text.isdigit() and self._query("SELECT 1 FROM runs WHERE id=?", (int(text),)):
            return int(text)
        ids = [int(r[0]) for r in self._query("SELECT id FROM runs WHERE name=? ORDER BY id", (text,))]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise StoreError(f"run name {text!r} matches runs {', '.join(map(str, ids))}; give the id")
        raise StoreError(f"no run with id or name {text!r} in {self.path}")

    def set_status(self, run_id: int, status: str, message: str = "") -> None:
        """Set the run's status; "running" also records this process (pid, host) and the start."""
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
            else:
                finished = now if status in ("done", "cancelled", "failed", "interrupted") else None
                cur = c.execute(
                    "UPDATE runs SET status=?, message=?, updated=?, finished=? WHERE id=?",
                    (status, message, now, finished, int(run_id)),
                )
            if cur.rowcount == 0:
                raise StoreError(f"run {run_id} not found in {self.path}")

    def set_sigma_params(self, run_id: int, params: dict) -> None:
        """Record the sigma function's resolved parameters (e.g. the kNN offset m computed from data)."""
        with self._write() as c:
            c.execute("UPDATE runs SET sigma_params=? WHERE id=?", (_json(params), int(run_id)))

    def request_cancel(self, run_id: int) -> None:
        """Ask the process executing the run to stop after its current chunk."""
        with self._write() as c:
            if c.execute("UPDATE runs SET cancel=1 WHERE id=?", (int(run_id),)).rowcount == 0:
                raise StoreError(f"run {run_id} not found in {self.path}")

    def cancel_requested(self, run_id: int) -> bool:
        """Whether cancellation was requested for the run."""
        rows = self._query("SELECT cancel FROM runs WHERE id=?", (int(run_id),))
        return bool(rows and rows[0][0])

    def delete_run(self, run_id: int) -> None:
        """Remove a run and its results."""
        with self._write() as c:
            c.execute("DELETE FROM results WHERE run_id=?", (int(run_id),))
            if c.execute("DELETE FROM runs WHERE id=?", (int(run_id),)).rowcount == 0:
                raise StoreError(f"run {run_id} not found in {self.path}")

    # ---------------------------------------------------------------- results
    def add_result(self, run_id: int, result: Any) -> None:
        """Commit one point's result now; a point already stored for the run is kept as it is."""
        d = _to_row(result)
        now = time.time()
        counts = d.get("counts")
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
            c.execute("UPDATE runs SET updated=? WHERE id=?", (now, int(run_id)))

    def results(self, run_id: int) -> pd.DataFrame:
        """Per-point results of a run, ordered by idx (``correct`` bool, ``counts`` list)."""
        rows = self._query(
            "SELECT idx, label, predict, correct, p_a_lower, sigma, radius, naive_radius, counts,"
            " seconds FROM results WHERE run_id=? ORDER BY idx",
            (int(run_id),),
        )
        df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        df["correct"] = df["correct"].astype(bool)
        for col in ("idx", "label", "predict"):
            df[col] = df[col].astype("int64")
        for col in ("p_a_lower", "sigma", "radius", "naive_radius", "seconds"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        df["counts"] = [None if c is None else json.loads(c) for c in df["counts"]]
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


# -------------------------------------------------------------------- Cohen log format
_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)")


def parse_log_time(text: str) -> float:
    """Seconds from ``12.5`` or ``str(datetime.timedelta)`` such as ``0:00:01.234567``."""
    text = text.strip()
    m = _TIMEDELTA.fullmatch(text)
    if m:
        days = int(m.group(1) or 0)
        return days * 86400 + int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time {text!r} is not a non-negative number")
    return value


def read_cohen_log(path: str | Path | IO[str]) -> pd.DataFrame:
    """Parse the reference code's tab-separated log; LogFormatError names the bad line."""
    if hasattr(path, "read"):
        lines = path.read().splitlines()  # type: ignore[union-attr]
        where = getattr(path, "name", "log")
    else:
        where = str(path)
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise LogFormatError(f"{where}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LogFormatError(f"{where}: cannot read as text ({exc})") from None
    if not lines or lines[0].strip().split("\t") != COHEN_HEADER:
        got = lines[0][:80] if lines else "empty file"
        raise LogFormatError(
            f"{where}: line 1: expected the tab-separated header {' '.join(COHEN_HEADER)!r}, got {got!r}"
        )
    rows, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 6:
            raise LogFormatError(f"{where}: line {number}: expected 6 tab-separated fields, got {len(fields)}")
        try:
            idx, label, predict = int(fields[0]), int(fields[1]), int(fields[2])
            radius = float(fields[3])
            correct = int(fields[4])
            seconds = parse_log_time(fields[5])
        except ValueError as exc:
            raise LogFormatError(f"{where}: line {number}: {exc}") from None
        if not (math.isfinite(radius) and radius >= 0):
            raise LogFormatError(f"{where}: line {number}: radius {fields[3]!r} must be finite and >= 0")
        if correct not in (0, 1):
            raise LogFormatError(f"{where}: line {number}: correct must be 0 or 1, got {fields[4]!r}")
        if predict < -1 or label < 0 or idx < 0:
            raise LogFormatError(f"{where}: line {number}: idx, label must be >= 0 and predict >= -1")
        if idx in seen:
            raise LogFormatError(f"{where}: line {number}: idx {idx} appears twice")
        seen.add(idx)
        rows.append((idx, label, predict, radius, bool(correct), seconds))
    if not rows:
        raise LogFormatError(f"{where}: no result lines after the header")
    return pd.DataFrame(rows, columns=["idx", "label", "predict", "radius", "correct", "seconds"])


def _constant_sigma(sigma: str | float | None) -> tuple[str | None, dict, float | None, float]:
    """(spec, params, per-point sigma or None, r) for the --sigma of an imported log."""
    if sigma is None or sigma == "":
        return None, {}, None, 0.0
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        from smoothviz.sigma import parse_sigma_spec

        spec = str(sigma)
        params = parse_sigma_spec(spec)
        kind = str(params.get("kind", spec.split(":")[0]))
        if kind == "constant":
            value = float(params["sigma"])
            return f"constant:{value:g}", params, value, 0.0
        return spec, params, None, float(params.get("r", 0.0))
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgument(f"--sigma {sigma!r}: must be > 0")
    return f"constant:{value:g}", {"kind": "constant", "sigma": value}, value, 0.0


def import_cohen_log(
    store: Store,
    path: str | Path,
    name: str,
    dataset: str,
    sigma: str | float | None = None,
    *,
    n: int | None = None,
    alpha: float | None = None,
) -> int:
    """Import a reference-code certification log as a finished run; returns the new run id.

    The log has no p_A or counts; ``sigma`` (a number or spec) fills the per-point sigma for a
    constant sigma, and the logged radius is both the radius and the naive radius.
    """
    df = read_cohen_log(path)
    spec, params, sigma_value, r = _constant_sigma(sigma)
    run_id = store.create_run(
        name=name, dataset=dataset, split="test", checkpoint=None, sigma_spec=spec,
        sigma_params=params, r=r, n0=None, n=n, alpha=alpha, device=None,
        indices=df["idx"].tolist(), seed=None, batch_size=None,
        options={"imported_from": str(path)}, kind="import",
    )
    for row in df.itertuples(index=False):
        store.add_result(run_id, {
            "idx": row.idx, "label": row.label, "predict": row.predict, "correct": row.correct,
            "p_a_lower": None, "sigma": sigma_value, "radius": row.radius,
            "naive_radius": row.radius, "counts": None, "seconds": row.seconds,
        })
    store.set_status(run_id, "done", f"imported from {Path(str(path)).name}")
    return run_id


@contextlib.contextmanager
def _text_out(target: str | Path | IO[str]) -> Iterator[IO[str]]:
    if hasattr(target, "write"):
        yield target  # type: ignore[misc]
    else:
        p = Path(target)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8", newline="") as f:
            yield f


def export_cohen_log(store: Store, run_id: int, path: str | Path | IO[str]) -> None:
    """Write the run in the reference code's log format (time as h:mm:ss.ffffff)."""
    df = store.results(run_id)
    with _text_out(path) as f:
        f.write("\t".join(COHEN_HEADER) + "\n")
        for row in df.itertuples(index=False):
            seconds = 0.0 if row.seconds is None or math.isnan(row.seconds) else float(row.seconds)
            f.write(
                f"{row.idx}\t{row.label}\t{row.predict}\t{float(row.radius)!r}\t{int(row.correct)}\t"
                f"{dt.timedelta(seconds=seconds)}\n"
            )


def export_csv(store: Store, run_id: int, path: str | Path | IO[str]) -> None:
    """Write the run's per-point results as CSV (counts as a JSON list)."""
    df = store.results(run_id)
    df["counts"] = [None if c is None else json.dumps(c) for c in df["counts"]]
    with _text_out(path) as f:
        df.to_csv(f, index=False, lineterminator="\n")
