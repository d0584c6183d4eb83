"""Background jobs for the dashboard: the CLI runs in a subprocess, tracked by files on disk.

A page script is stopped by any widget interaction, so long work (certify, train) runs as
``python -m smoothviz <verb> ...`` in its own process group. Each job keeps
``<jobs_dir>/<job_id>.json`` (command, pid, start time), ``.log`` (stdout and stderr) and, once it
ends, ``.rc`` (exit code). Any ``JobManager`` pointed at the same folder finds a job by its id, so
a browser reload or a fresh server sees running and finished jobs alike.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from smoothviz.errors import InvalidArgument, StoreError
from smoothviz.processes import pid_alive

RUNNING, DONE, FAILED, CANCELLED, LOST = "running", "done", "failed", "cancelled", "lost"
# How long a certify process that has recorded the end of its run may take to exit.
EXIT_GRACE_SECONDS = 10.0
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Job:
    """What is known about one job from its files."""

    id: str
    kind: str
    argv: list[str]
    pid: int
    started: float
    run_id: int | None = None
    db: str | None = None
    progress_file: str | None = None
    cancel_requested: bool = False
    returncode: int | None = None
    status: str = RUNNING
    extra: dict = field(default_factory=dict)


class JobManager:
    """Start, follow and cancel CLI subprocesses; state lives in ``jobs_dir`` (no Streamlit here)."""

    def __init__(self, jobs_dir: str | Path) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files
    def _path(self, job_id: str, suffix: str) -> Path:
        if not _ID.match(job_id):
            raise InvalidArgument(f"job id {job_id!r} has characters other than letters, digits, '_', '.', '-'")
        return self.jobs_dir / f"{job_id}{suffix}"

    def _write_meta(self, job: Job) -> None:
        path = self._path(job.id, ".json")
        tmp = path.with_suffix(".json.tmp")
        meta = {k: v for k, v in asdict(job).items() if k not in ("returncode", "status")}
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ start
    def start(
        self,
        kind: str,
        cli_args: list[str],
        *,
        job_id: str | None = None,
        run_id: int | None = None,
        db: str | Path | None = None,
        progress_file: str | Path | None = None,
        cwd: str | Path | None = None,
        extra: dict | None = None,
    ) -> Job:
        """Run ``python -m smoothviz <cli_args>`` in the background.

        A job with this id that is still running is returned as it is (no second process).
        """
        job_id = job_id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self._lock:
            existing = self.get(job_id)
            if existing is not None and existing.status == RUNNING:
                return existing
            for suffix in (".rc", ".log"):
                self._path(job_id, suffix).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "smoothviz", *map(str, cli_args)]
            log = open(self._path(job_id, ".log"), "wb")  # noqa: SIM115 - handed to the child
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            try:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=str(cwd) if cwd else None, env=env, start_new_session=True,
                )
            finally:
                log.close()
            job = Job(
                id=job_id, kind=kind, argv=argv, pid=proc.pid, started=time.time(), run_id=run_id,
                db=str(db) if db is not None else None,
                progress_file=str(progress_file) if progress_file is not None else None,
                extra=dict(extra or {}),
            )
            self._write_meta(job)
            self._procs[job_id] = proc
            threading.Thread(target=self._reap, args=(job_id, proc), daemon=True).start()
            return job

    def start_certify(self, run_id: int, db: str | Path, device: str | None = None,
                      cwd: str | Path | None = None, processes: int = 1) -> Job:
        """Execute (or resume) run ``run_id`` of the store at ``db`` with ``smoothviz certify --run``.

        ``processes`` > 1 spreads the run over that many ranks of this machine (torchrun, one per
        GPU; ``smoothviz.launch``): rank 0 writes the store, so progress and cancel work as for one.

        A job of this run that is still executing it is returned as it is; one whose run has
        already recorded its end (cancelled, say) is let exit first. The run is marked ``pending``
        before the new process starts, so that whoever looks at the store sees at once that it is
        about to run (not the ``cancelled`` or ``failed`` of its previous attempt). StoreError if
        another process (e.g. the command line) is executing the run.
        """
        from smoothviz.store import Store

        job_id = certify_job_id(run_id)
        store = Store(db, create=False)
        try:
            run = store.run(int(run_id))
            existing = self.get(job_id)
            if existing is not None and existing.status == RUNNING:
                if run["status"] in ("pending", "running"):
                    return existing
                # The run has recorded its end and its process is on its way out: let it go first.
                if self.wait(job_id, timeout=EXIT_GRACE_SECONDS).status == RUNNING:
                    self._terminate(existing)
                    self.wait(job_id, timeout=EXIT_GRACE_SECONDS)
                run = store.run(int(run_id))
            if run["status"] == "running":
                raise StoreError(f"run {run_id} is already being executed by process {run['pid']} on {run['host']}")
            if run["status"] != "pending":
                store.set_status(int(run_id), "pending", "starting")
        finally:
            store.close()
        from smoothviz.launch import certify_job_args

        args = certify_job_args(run_id, db, processes, device)
        return self.start("certify", args, job_id=job_id, run_id=int(run_id), db=db, cwd=cwd,
                          extra={"processes": int(processes)})

    def start_sweep(self, sweep_id: int, db: str | Path, cwd: str | Path | None = None, processes: int = 1) -> Job:
        """Execute (or resume) sweep ``sweep_id`` of the store at ``db`` with ``smoothviz sweep --sweep``.

        A job of this sweep that is still running is returned as it is. The sweep is marked
        ``pending`` before the process starts; StoreError if another process executes it.
        ``processes`` > 1 runs each of its certifications on that many ranks (torchrun).
        """
        from smoothviz.store import Store

        job_id = sweep_job_id(sweep_id)
        store = Store(db, create=False)
        try:
            record = store.sweep(int(sweep_id))
            existing = self.get(job_id)
            if existing is not None and existing.status == RUNNING:
                return existing
            if store.sweep_executing(int(sweep_id)):
                raise StoreError(f"sweep {sweep_id} is already being executed by process {record['pid']} on "
                                 f"{record['host']}")
            if record["status"] != "pending":
                store.set_sweep_status(int(sweep_id), "pending", "starting")
        finally:
            store.close()
        args = ["sweep", "--sweep", str(int(sweep_id)), "--db", str(db)]
        if processes > 1:
            args += ["--processes", str(int(processes))]
        return self.start("sweep", args, job_id=job_id, db=db, cwd=cwd,
                          extra={"sweep_id": int(sweep_id), "processes": int(processes)})

    def _reap(self, job_id: str, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        path = self._path(job_id, ".rc")
        tmp = path.with_suffix(".rc.tmp")
        try:
            tmp.write_text(str(rc))
            os.replace(tmp, path)
        except OSError:  # the jobs folder was removed meanwhile; the Popen still knows the code
            pass

    # ------------------------------------------------------------------ query
    def get(self, job_id: str) -> Job | None:
        """The job with this id as its files describe it, or None if there is none."""
        path = self._path(job_id, ".json")
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        job = Job(**{k: v for k, v in meta.items() if k in Job.__dataclass_fields__})
        proc = self._procs.get(job_id)
        if proc is not None:
            proc.poll()
        rc_path = self._path(job_id, ".rc")
        if rc_path.exists():
            try:
                job.returncode = int(rc_path.read_text().strip())
            except ValueError:
                job.returncode = None
        if job.returncode is not None:
            job.status = CANCELLED if job.cancel_requested else (DONE if job.returncode == 0 else FAILED)
        elif proc is not None and proc.returncode is not None:
            job.returncode = proc.returncode
            job.status = CANCELLED if job.cancel_requested else (DONE if proc.returncode == 0 else FAILED)
        elif proc is None and not pid_alive(job.pid):
            job.status = CANCELLED if job.cancel_requested else LOST
        else:
            job.status = RUNNING
        return job

    def jobs(self, kind: str | None = None) -> list[Job]:
        """All jobs in the folder, newest first (optionally of one kind)."""
        found = [self.get(p.stem) for p in self.jobs_dir.glob("*.json")]
        out = [j for j in found if j is not None and (kind is None or j.kind == kind)]
        return sorted(out, key=lambda j: j.started, reverse=True)

    def is_running(self, job_id: str) -> bool:
        """True while the job's process is alive."""
        job = self.get(job_id)
        return job is not None and job.status == RUNNING

    def log_tail(self, job_id: str, max_chars: int = 4000) -> str:
        """The last ``max_chars`` characters of the job's combined stdout/stderr."""
        path = self._path(job_id, ".log")
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_chars))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def read_progress(self, job_id: str) -> dict | None:
        """The JSON progress file of a job started with ``progress_file`` (None until it exists)."""
        job = self.get(job_id)
        if job is None or not job.progress_file:
            return None
        try:
            return json.loads(Path(job.progress_file).read_text())
        except (OSError, ValueError):
            return None

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> Job | None:
        """Block until the job is no longer running (or ``timeout`` seconds pass); returns its state."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None or job.status != RUNNING:
                return job
            if end is not None and time.monotonic() >= end:
                return job
            time.sleep(poll)

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: str, grace_s: float = 5.0) -> bool:
        """Stop a running job; False if it was not running.

        A certify job is first asked through the store's cancel flag (it stops between batches
        and records ``cancelled``), a sweep job through its sweep's (its run in flight stops, no
        other starts); whatever still runs after ``grace_s`` seconds gets SIGTERM.
        """
        job = self.get(job_id)
        if job is None or job.status != RUNNING:
            return False
        job.cancel_requested = True
        self._write_meta(job)
        if job.kind == "certify" and job.run_id is not None and job.db:
            from smoothviz.store import Store

            Store(job.db).request_cancel(job.run_id)
            threading.Thread(target=self._terminate_later, args=(job, grace_s), daemon=True).start()
        elif job.kind == "sweep" and job.extra.get("sweep_id") is not None and job.db:
            from smoothviz.store import Store

            Store(job.db).request_sweep_cancel(int(job.extra["sweep_id"]))
            threading.Thread(target=self._terminate_later, args=(job, grace_s), daemon=True).start()
        else:
            self._terminate(job)
        return True

    def _still_running(self, job: Job) -> bool:
        """True while ``job``'s own process runs (a later job under the same id is another process)."""
        current = self.get(job.id)
        return current is not None and current.pid == job.pid and current.status == RUNNING

    def _terminate_later(self, job: Job, grace_s: float) -> None:
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            if not self._still_running(job):
                return
            time.sleep(0.1)
        self._terminate(job)
        if job.kind == "certify" and job.run_id is not None and job.db:
            end = time.monotonic() + 10.0
            while self._still_running(job) and time.monotonic() < end:
                time.sleep(0.1)
            current = self.get(job.id)
            if current is None or current.pid != job.pid:
                return  # the run was started again meanwhile: its status belongs to the new process
            from smoothviz.store import Store

            store = Store(job.db)
            if store.run(job.run_id).get("status") in ("pending", "running", "interrupted"):
                store.set_status(job.run_id, "cancelled", "stopped by the dashboard")

    def _terminate(self, job: Job) -> None:
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------ progress
    def engine_progress(self, job_id: str) -> EngineProgress | None:
        """What the job's engine last reported: its progress file if it writes one, else the
        latest progress-bar line of its log (None before the first one)."""
        found = self.read_progress(job_id)
        if found is not None:
            parsed = EngineProgress.from_dict(found)
            if parsed is not None:
                return parsed
        return parse_progress_line(self.log_tail(job_id, 4000))


def certify_job_id(run_id: int) -> str:
    """The job id under which the dashboard executes store run ``run_id``."""
    return f"certify-run{int(run_id)}"


def sweep_job_id(sweep_id: int) -> str:
    """The job id under which the dashboard executes sweep ``sweep_id``."""
    return f"sweep{int(sweep_id)}"


# ---------------------------------------------------------------------- progress of a certify job
# A line of smoothviz.progress.ProgressBar: "[####----] 3/50 points (12%)  1.2 points/s  ETA 0:00:40".
_BAR_LINE = re.compile(
    r"\[[#-]*\]\s+(\d+)/(\d+)\s+\S+\s+\((\d+(?:\.\d+)?)%\)\s+(?:([0-9][0-9.eE+-]*)|-)\s+\S+/s"
    r"\s+ETA\s+(\d+:\d{2}:\d{2}|\?)"
)


@dataclass(frozen=True)
class EngineProgress:
    """The engine's own count for the points of this session (a resumed run skips stored points).

    ``fraction`` is the share of this session's samples drawn so far, so it moves while a point
    is still being sampled; ``done`` counts finished points only.
    """

    done: int
    total: int
    fraction: float
    rate: float | None = None
    eta_s: float | None = None

    @classmethod
    def from_dict(cls, info: dict) -> EngineProgress | None:
        """From the engine's progress dict (``done``, ``total``, ``fraction``, ``rate``, ``eta``)."""
        try:
            done, total = int(info["done"]), int(info["total"])
            fraction = float(info.get("fraction", done / total if total else 1.0))
        except (KeyError, TypeError, ValueError):
            return None
        rate, eta = _finite(info.get("rate")), _finite(info.get("eta"))
        if total < 0 or not 0 <= done <= total or not math.isfinite(fraction):
            return None
        return cls(done, total, min(max(fraction, 0.0), 1.0), rate, eta)


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds(text: str) -> float | None:
    if text == "?":
        return None
    h, m, s = (int(p) for p in text.split(":"))
    return float(h * 3600 + m * 60 + s)


def parse_progress_line(log: str) -> EngineProgress | None:
    """The latest complete progress-bar line in ``log`` (a job log's tail), or None.

    A line still being written (no newline yet) is ignored, and so is anything else the job
    prints between progress lines.
    """
    lines = re.split(r"[\r\n]", log)
    if not log.endswith(("\n", "\r")):
        lines = lines[:-1]
    for line in reversed(lines):
        m = _BAR_LINE.search(line)
        if m is None:
            continue
        done, total = int(m.group(1)), int(m.group(2))
        if done > total:
            continue
        rate = _finite(m.group(4)) if m.group(4) else None
        return EngineProgress(done, total, min(float(m.group(3)) / 100.0, 1.0), rate or None, _seconds(m.group(5)))
    return None


@dataclass(frozen=True)
class LiveProgress:
    """One consistent view of a running certification: the store's finished points plus the
    engine's samples of the points in flight (``point_samples``, while less than one point's
    worth is in flight)."""

    done: int
    total: int
    fraction: float
    samples_per_point: int
    point_samples: int | None = None
    rate: float | None = None
    eta_s: float | None = None
    started: bool = True

    def text(self) -> str:
        """One line for the progress bar."""
        from smoothviz.progress import format_seconds

        head = f"{self.done}/{self.total} {'point' if self.total == 1 else 'points'} ({100 * self.fraction:.0f}%)"
        if not self.started:
            return f"{head} · starting: loading the data, the model and σ(x)…"
        parts = [head]
        if self.point_samples is not None:
            parts.append(f"{self.point_samples:,} samples in flight (a point takes {self.samples_per_point:,})")
        if self.rate:
            parts.append(f"{self.rate:.3g} points/s · ETA {format_seconds(self.eta_s)}")
        return " · ".join(parts)


def live_progress(total: int, stored: int, samples_per_point: int, engine: EngineProgress | None,
                  store_rate: float | None = None, store_eta: float | None = None,
                  starting: bool = True, samples_in_flight: bool = True) -> LiveProgress:
    """Combine the store's count (``stored`` of ``total`` points committed) with the engine's.

    The engine counts only the points of its own session: on a resumed run the points stored
    before it started are ``total - engine.total``. Progress within a point comes from the
    engine's sample fraction, so a run with a large n moves before its first point is stored.
    Without the engine's word, ``starting`` says whether the process is still preparing (a job
    of ours) or whether only the store's count is known (a run executed elsewhere).
    ``samples_in_flight`` False leaves ``point_samples`` out: a sequential run's points take
    different numbers of samples (``samples_per_point`` is then only the budget), so its samples
    in flight are counted from the store's in-flight rows instead.
    """
    total = max(int(total), 0)
    stored = min(max(int(stored), 0), total)
    per_point = max(int(samples_per_point), 1)
    if engine is None or engine.total > total:
        fraction = stored / total if total else 1.0
        return LiveProgress(stored, total, fraction, per_point, None, store_rate, store_eta, started=not starting)
    before = total - engine.total
    in_points = engine.fraction * engine.total
    done = max(stored, min(before + engine.done, total))
    fraction = max(stored, before + in_points) / total if total else 1.0
    within = before + in_points - done
    point_samples = round(within * per_point) if samples_in_flight and 0 < within < 1 and done < total else None
    rate = engine.rate if engine.rate else store_rate
    eta = engine.eta_s if engine.rate else store_eta
    return LiveProgress(done, total, min(fraction, 1.0), per_point, point_samples, rate, eta, started=True)
