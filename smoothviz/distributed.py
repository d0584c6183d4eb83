"""One certification on many ranks (torchrun / torch.distributed): who certifies which point, and
how every result reaches the one writer.

Boundary. This module assigns points to ranks and carries results to rank 0; it never opens
the results store. On rank 0 the caller (``smoothviz.commands._torchrun``, through
``certify.run_certification``) owns the store and hands ``certify_on_ranks`` a ``sink`` that
commits one result; the other ranks run ``serve``. Every rank runs the single-process engine
(``certify.iter_certify`` and friends, wrapped as a ``PointWork``) on its own device, chosen
from LOCAL_RANK.

Assignment (``Assignment``). Every point still to do goes to exactly one rank; nothing is padded
or repeated (``DistributedSampler`` repeats points to even out its shards, which would count
them twice in a certified accuracy). Where every point costs the same (CERTIFY, PREDICT: n0 + n
samples each) rank r takes the strided shard todo[r::K] at once; where costs vary (a
sequential rule stops early on easy points) rank 0 hands out chunks on request, shrinking as
the work runs out, so that no rank idles while another still has a long queue.

Exactness. A point's counts depend only on (seed, idx) (``smoothviz.noise``), so neither the
rank nor the chunk a point lands in changes them. sigma(x) of the run's points, and kNN's
offset m, are computed once on rank 0 and sent with the plan, so every rank samples with the
same sigma; each rank still computes them itself and refuses to start when they differ (other
data or library on that machine), as it refuses inputs whose fingerprint differs from rank 0's
and a checkpoint whose SHA-256 differs.

Messages. Small JSON objects, point to point over the default process group on the CPU (gloo;
a CUDA rank's group also has NCCL for its device, which certification never needs). A rank
other than 0 always speaks first and rank 0 answers: "give me points", "here are a chunk's
results", "still working" (at most every HEARTBEAT_SECONDS, between batches), an error, or
"bye". The answer says whether to stop, so a cancel reaches every rank within a heartbeat and
a batch. Results are sent as soon as their chunk is done: a rank that dies loses only the
chunk it was sampling; rank 0 commits what it receives at once.

Failure. torchrun stops every rank when one dies; rank 0 then records the run's end in the
store (``RankStopped``), and rerunning the same command, on any number of ranks, certifies
exactly the points the store lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist

from smoothviz import certify
from smoothviz.errors import Cancelled, CheckpointError, InvalidArgument, SmoothvizError
from smoothviz.launch import LaunchError, World
from smoothviz.store import file_sha256

HEARTBEAT_SECONDS = 1.0  # longest silence of a working rank (a batch may take longer)
# How long a rank waits on the process group (joining it, or a message) before giving up.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)
# sigma(x) computed on another rank may differ from rank 0's by float rounding (another device
# type); beyond this relative difference the data or the code differ.
SIGMA_RTOL = 1e-5
STOP_GRACE_SECONDS = 10.0  # how long rank 0 waits for the others to stop after a failure
_TO_ZERO = (1, 2)  # tags of a message to rank 0: header (its length), body
_FROM_ZERO = (3, 4)

Sink = Callable[[Any], None]


class RankFailed(SmoothvizError):
    """Another rank reported an error, or rank 0 lost it; the message names the rank."""


class RankStopped(SmoothvizError):
    """This rank was told to stop (SIGTERM: torchrun stops every rank when one of them dies)."""


class Reported(SmoothvizError):
    """A rank's error was handed to rank 0, which reports it; the rank itself stays quiet."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line (its type where it is not a smoothviz error)."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, SmoothvizError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:400]


# ---------------------------------------------------------------------- ranks and messages
def rank_device(spec: str | None, world: World) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for ``auto``/``cuda`` where there are GPUs, else the CPU.

    A single GPU (``cuda:N``) cannot be shared out among ranks, so it is refused; so is a local
    rank without a GPU of its own.
    """
    text = (spec or "auto").strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text not in ("auto", "cuda"):
        raise InvalidArgument(f"--device {spec!r}: with several ranks each takes cuda:LOCAL_RANK; "
                              "give --device auto, cuda or cpu")
    if not torch.cuda.is_available():
        if text == "cuda":
            raise InvalidArgument("--device cuda: CUDA is not available on this machine")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise InvalidArgument(f"--device {text}: local rank {world.local_rank} has no GPU of its own (this machine "
                              f"has {count}); start at most {count} processes per machine")
    return torch.device("cuda", world.local_rank)


class Ranks:
    """The ranks of one launch: JSON messages between rank 0 and the others."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rank, self.size = world.rank, world.size

    @classmethod
    @contextlib.contextmanager
    def joined(cls, world: World, device: torch.device) -> Iterator[Ranks]:
        """Join the process group torchrun set up (LaunchError in one line when that fails)."""
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any rendezvous failure is one line for the user
            raise LaunchError(f"rank {world.rank} cannot join the other ranks at {world.master}: "
                              f"{one_line(exc)}") from None
        try:
            yield cls(world)
        finally:
            dist.destroy_process_group()

    def send(self, dst: int, message: Mapping) -> None:
        """Send one JSON message to rank ``dst``."""
        data = json.dumps(message, separators=(",", ":")).encode()
        head, body = _FROM_ZERO if self.rank == 0 else _TO_ZERO
        dist.send(torch.tensor([len(data)], dtype=torch.int64), dst, tag=head)
        dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst, tag=body)

    def recv(self, src: int | None = None) -> tuple[int, dict]:
        """The next message from ``src`` (rank 0: from any rank when None) and its sender."""
        head, body = _TO_ZERO if self.rank == 0 else _FROM_ZERO
        length = torch.zeros(1, dtype=torch.int64)
        sender = dist.recv(length, src=src, tag=head)
        data = torch.empty(int(length.item()), dtype=torch.uint8)
        dist.recv(data, src=sender, tag=body)
        return int(sender), json.loads(data.numpy().tobytes())

    def share(self, message: Mapping | None = None) -> dict:
        """Rank 0's ``message`` on every rank (rank 0 sends it, the others receive it)."""
        if self.rank == 0:
            for other in range(1, self.size):
                self.send(other, message or {})
            return dict(message or {})
        return self.recv(0)[1]

    def agree(self, error: str | None) -> str | None:
        """Every rank's check in one verdict, the same on all ranks: None, or the first failing
        rank's error as ``rank R: ...`` (rank 0 checks before it shares its plan, so it passes None)."""
        if self.rank != 0:
            self.send(0, {"error": error})
            return self.recv(0)[1]["error"]
        verdict = None
        for other in range(1, self.size):
            reported = self.recv(other)[1].get("error")
            if verdict is None and reported:
                verdict = f"rank {other}: {reported}"
        for other in range(1, self.size):
            self.send(other, {"error": verdict})
        return verdict


# ---------------------------------------------------------------------- the plan of a run
_PLAN_FIELDS = ("id", "dataset", "split", "checkpoint", "options", "indices", "n0", "n", "alpha", "seed",
                "sequential")


def input_fingerprint(prepared: certify.PreparedRun) -> str:
    """SHA-256 of the run's inputs and labels, in the run's order (the same data gives the same value)."""
    xs, ys = certify.select_split(prepared.dataset, prepared.split)
    select = torch.tensor(prepared.indices, dtype=torch.int64)
    digest = hashlib.sha256()
    digest.update(xs[select].to(torch.float32).contiguous().numpy().tobytes())
    digest.update(ys[select].to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_plan(run: Mapping, prepared: certify.PreparedRun, batch_size: int | str | None) -> dict:
    """What the other ranks need to prepare rank 0's run (JSON): the run's fields with the sigma
    spec resolved (kNN's m), the checkpoint's SHA-256, sigma(x) of every point, the inputs'
    fingerprint. ``batch_size``: the one asked for (each rank sizes its own batches)."""
    fields = {key: run.get(key) for key in _PLAN_FIELDS}
    fields.update(sigma_spec=prepared.sigma_fn.spec, batch_size=batch_size,
                  checkpoint_sha256=run.get("checkpoint_sha256") or file_sha256(prepared.checkpoint))
    sigmas = prepared.sigmas.detach().to("cpu", torch.float64).tolist()
    return {"run": fields, "sigmas": sigmas, "fingerprint": input_fingerprint(prepared)}


def prepare_rank(plan: Mapping, device: torch.device, trust_code: bool = False) -> certify.PreparedRun:
    """Rank 0's run prepared on this rank's ``device``, checked to be the same run, with rank 0's sigma(x).

    CheckpointError when this machine's checkpoint differs from rank 0's, InvalidArgument when
    its inputs or sigma(x) do; everything ``certify.prepare_run`` checks is checked too.
    ``trust_code``: this rank's command allows a model that runs code (``certify.prepare_run``).
    """
    run = plan["run"]
    here = file_sha256(run["checkpoint"])
    if here is not None and here != run["checkpoint_sha256"]:
        raise CheckpointError(f"{run['checkpoint']} differs from rank 0's (SHA-256); every machine needs the "
                              "same checkpoint")
    prepared = certify.prepare_run(run, device=str(device), batch_size=run.get("batch_size"), trust_code=trust_code)
    if input_fingerprint(prepared) != plan["fingerprint"]:
        raise InvalidArgument(f"the {prepared.dataset.name} inputs of the run's points differ from rank 0's; "
                              "every machine needs the same dataset files")
    theirs = torch.tensor(plan["sigmas"], dtype=torch.float64)
    mine = prepared.sigmas.detach().to("cpu", torch.float64)
    if mine.shape != theirs.shape:
        raise InvalidArgument("sigma(x): rank 0 sent values for other points")
    gap = float(((mine - theirs).abs() / theirs).max()) if len(theirs) else 0.0
    if not gap <= SIGMA_RTOL:
        raise InvalidArgument(f"sigma(x) here differs from rank 0's by up to {gap:.2g} (relative); "
                              "the data or the library differ on this machine")
    return dataclasses.replace(prepared, sigmas=theirs.to(device=prepared.device, dtype=torch.float32))


# ---------------------------------------------------------------------- the work of a point
class PointWork(Protocol):
    """What every rank does to a list of points: the single-process engine, one chunk at a time.

    ``uniform_cost``: every point costs the same (strided shards), else rank 0 hands out chunks.
    ``chunk_points``: points per call that keep the device busy. A call certifies ``indices``
    (a subset of the run's points) and returns one result per point, each with ``idx``; it
    calls ``progress`` with the engine's progress dict and stops with Cancelled once ``cancel()``
    turns true. ``encode``/``decode`` turn a result into JSON and back, exactly.
    """

    uniform_cost: bool

    @property
    def samples_per_point(self) -> int: ...

    @property
    def chunk_points(self) -> int: ...

    def __call__(self, indices: list[int], progress: certify.ProgressFn, cancel: certify.CancelFn) -> list[Any]: ...

    def encode(self, result: Any) -> dict: ...

    def decode(self, data: Mapping) -> Any: ...


@dataclasses.dataclass
class CertifyWork:
    """CERTIFY of a prepared run's points, exactly as ``certify.run_certification`` computes them:
    fixed n (``certify.iter_certify``), or the run's sequential rule
    (``sequential_engine.iter_certify_sequential``), whose points cost unequal numbers of samples."""

    prepared: certify.PreparedRun
    n0: int
    n: int
    alpha: float
    seed: int

    @classmethod
    def for_run(cls, prepared: certify.PreparedRun, run: Mapping) -> CertifyWork:
        """The work of a store run (or a plan's run fields)."""
        return cls(prepared, int(run["n0"]), int(run["n"]), float(run["alpha"]), int(run["seed"] or 0))

    @property
    def uniform_cost(self) -> bool:
        return self.prepared.rule is None

    @property
    def samples_per_point(self) -> int:
        return self.n0 + self.n

    @property
    def chunk_points(self) -> int:
        return certify.default_chunk_points(self.prepared.engine.batch_size, self.samples_per_point)

    def __call__(self, indices: list[int], progress: certify.ProgressFn,
                 cancel: certify.CancelFn) -> list[certify.PointResult]:
        p, engine, ds = self.prepared, self.prepared.engine, self.prepared.dataset
        xs, ys, sigmas = p.inputs(indices)
        if p.rule is not None:
            from smoothviz.sequential_engine import iter_certify_sequential

            return list(iter_certify_sequential(
                engine.classify, xs, ys, list(indices), sigmas, self.n0, p.rule, ds.num_classes, engine.batch_size,
                p.device, self.seed, progress=progress, cancel=cancel,
            ))
        return list(certify.iter_certify(
            engine.classify, xs, ys, list(indices), p.sigma_fn, self.n0, self.n, self.alpha, ds.num_classes,
            engine.batch_size, p.device, self.seed, p.sigma_fn.r, ds.dim, progress=progress, cancel=cancel,
            chunk_points=len(indices), sigmas=sigmas,
        ))

    def encode(self, result: certify.PointResult) -> dict:
        return dataclasses.asdict(result)

    def decode(self, data: Mapping) -> certify.PointResult:
        if self.prepared.rule is not None:
            from smoothviz.sequential_engine import SequentialResult

            return SequentialResult(**data)
        return certify.PointResult(**data)


@dataclasses.dataclass
class PredictWork:
    """PREDICT of a prepared run's points, exactly as ``smoothviz predict`` computes them."""

    prepared: certify.PreparedRun
    n: int
    alpha: float
    seed: int

    @property
    def uniform_cost(self) -> bool:
        return True

    @property
    def samples_per_point(self) -> int:
        return self.n

    @property
    def chunk_points(self) -> int:
        return certify.default_chunk_points(self.prepared.engine.batch_size, self.n)

    def __call__(self, indices: list[int], progress: certify.ProgressFn,
                 cancel: certify.CancelFn) -> list[certify.PredictResult]:
        p, engine, ds = self.prepared, self.prepared.engine, self.prepared.dataset
        xs, ys, sigmas = p.inputs(indices)
        return certify.predict_points(
            engine.classify, xs, ys, list(indices), p.sigma_fn, self.n, self.alpha, ds.num_classes,
            engine.batch_size, p.device, self.seed, progress=progress, cancel=cancel, chunk_points=len(indices),
            sigmas=sigmas,
        )

    def encode(self, result: certify.PredictResult) -> dict:
        return dataclasses.asdict(result)

    def decode(self, data: Mapping) -> certify.PredictResult:
        return certify.PredictResult(**data)


# ---------------------------------------------------------------------- assignment
class Assignment:
    """Which rank certifies which point: each point of ``todo`` is handed out exactly once.

    Static (``dynamic=False``): rank r's first request gets the strided shard todo[r::size],
    later ones nothing. Dynamic: each request gets the next ceil(remaining / (2 * size)) points
    (guided self-scheduling), at most the chunk asked for (default ``chunk``), at least one,
    until none is left. ``owner`` records the rank each handed-out point went to.
    """

    def __init__(self, todo: Sequence[int], size: int, dynamic: bool, chunk: int) -> None:
        if size < 1:
            raise InvalidArgument(f"world size must be >= 1, got {size}")
        self.todo = [int(i) for i in todo]
        if len(set(self.todo)) != len(self.todo):
            raise InvalidArgument("points to assign: contains duplicates")
        self.size, self.dynamic, self.chunk = int(size), bool(dynamic), max(1, int(chunk))
        self.owner: dict[int, int] = {}
        self._next = 0
        self._served: set[int] = set()
        self._lock = threading.Lock()

    def take(self, rank: int, chunk: int | None = None) -> list[int]:
        """The next points for ``rank`` ([] when it has nothing more to do)."""
        if not 0 <= rank < self.size:
            raise InvalidArgument(f"rank {rank} is outside the world of {self.size}")
        with self._lock:
            if not self.dynamic:
                if rank in self._served:
                    return []
                self._served.add(rank)
                points = self.todo[rank::self.size]
            else:
                remaining = len(self.todo) - self._next
                size = min(max(1, int(chunk or self.chunk)), max(1, math.ceil(remaining / (2 * self.size))))
                points = self.todo[self._next:self._next + size]
                self._next += len(points)
            for point in points:
                self.owner[point] = rank
            return points


def _chunks(points: Sequence[int], size: int) -> Iterator[list[int]]:
    size = max(1, int(size))
    for start in range(0, len(points), size):
        yield list(points[start:start + size])


# ---------------------------------------------------------------------- rank 0
class _Tally:
    """Progress of all ranks together, in the engine's progress dict (points of this session)."""

    def __init__(self, total: int, per_point: int, progress: certify.ProgressFn | None) -> None:
        self.total, self.per_point, self.progress = total, max(1, per_point), progress
        self.done = 0
        self.in_flight: dict[int, int] = {}
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    def points(self, rank: int, count: int) -> None:
        with self._lock:
            self.done += count
            self.in_flight[rank] = 0
            self._report()

    def samples(self, rank: int, samples: int) -> None:
        with self._lock:
            self.in_flight[rank] = max(0, int(samples))
            self._report()

    def report(self) -> None:
        with self._lock:
            self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.t0
        samples = self.done * self.per_point + sum(self.in_flight.values())
        equiv = min(samples / self.per_point, float(self.total))
        rate = equiv / elapsed if elapsed > 0 and equiv > 0 else None
        eta = (self.total - equiv) / rate if rate else None
        self.progress({"done": self.done, "total": self.total, "rate": rate, "eta": eta,
                       "fraction": equiv / self.total if self.total else 1.0, "samples": samples,
                       "elapsed": elapsed})


class _Coordinator:
    """Rank 0's side: hands out points, takes the results of every rank into the sink once each."""

    def __init__(self, ranks: Ranks, work: PointWork, assignment: Assignment, sink: Sink, tally: _Tally) -> None:
        self.ranks, self.work, self.assignment, self.sink, self.tally = ranks, work, assignment, sink, tally
        self.stopping = threading.Event()
        self.cancelled = False
        self.failure: BaseException | None = None
        self.done: set[int] = set()
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        """Stop every rank because of ``exc`` (the first failure is the one reported)."""
        with self._lock:
            if self.failure is None:
                self.failure = exc
        self.stopping.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.stopping.set()

    def accept(self, rank: int, results: Sequence[Any]) -> None:
        """Commit ``rank``'s results; a point it was not given, or one already stored, is refused."""
        with self._lock:
            for result in results:
                idx = int(result.idx)
                if self.assignment.owner.get(idx) != rank or idx in self.done:
                    raise RankFailed(f"rank {rank} returned point {idx}, which was not its to certify")
                self.sink(result)
                self.done.add(idx)
        self.tally.points(rank, len(results))

    def serve(self) -> None:
        """Answer every other rank until each has said bye (runs in a thread of rank 0)."""
        waiting = set(range(1, self.ranks.size))
        while waiting:
            try:
                src, message = self.ranks.recv()
            except Exception as exc:  # noqa: BLE001 - a broken process group ends the run, whatever broke it
                self.fail(RankFailed(f"rank 0 lost the other ranks: {one_line(exc)}"))
                return
            if "error" in message or message.get("bye"):
                if message.get("error"):
                    self.fail(RankFailed(f"rank {src}: {message['error']}"))
                waiting.discard(src)
                continue
            points: list[int] = []
            try:
                if "results" in message:
                    self.accept(src, [self.work.decode(d) for d in message["results"]])
                else:
                    self.tally.samples(src, int(message.get("samples", 0)))
                if message.get("want") and not self.stopping.is_set():
                    points = self.assignment.take(src, int(message["want"]))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread by certify_on_ranks
                self.fail(exc)
                points = []
            try:
                self.ranks.send(src, {"stop": self.stopping.is_set(), "points": points})
            except Exception as exc:  # noqa: BLE001 - as for recv
                self.fail(RankFailed(f"rank 0 lost rank {src}: {one_line(exc)}"))
                return

    def work_locally(self, cancel: certify.CancelFn | None) -> None:
        """Rank 0's own share, in the calling (main) thread."""
        def stop() -> bool:
            if not self.stopping.is_set() and cancel is not None and cancel():
                self.cancel()
            return self.stopping.is_set()

        while not stop():
            points = self.assignment.take(0, self.work.chunk_points)
            if not points:
                return
            for chunk in _chunks(points, self.work.chunk_points):
                try:
                    results = self.work(chunk, lambda info: self.tally.samples(0, int(info.get("samples", 0))), stop)
                except Cancelled:
                    return
                self.accept(0, results)

    def wait(self, thread: threading.Thread, cancel: certify.CancelFn | None, limit: float | None) -> None:
        """Until the other ranks have stopped (at most ``limit`` seconds), passing on a cancel."""
        end = None if limit is None else time.monotonic() + limit
        while thread.is_alive() and (end is None or time.monotonic() < end):
            thread.join(0.2)
            if not self.stopping.is_set() and cancel is not None and cancel():
                self.cancel()


def certify_on_ranks(
    ranks: Ranks,
    work: PointWork,
    todo: Sequence[int],
    sink: Sink,
    progress: certify.ProgressFn | None = None,
    cancel: certify.CancelFn | None = None,
) -> None:
    """Rank 0: certify every point of ``todo`` on all ranks; each result goes to ``sink`` once, as it arrives.

    The other ranks run ``serve`` meanwhile (also when ``todo`` is empty: they are told there is
    nothing to do). ``progress`` gets the engine's progress dict for all ranks together;
    ``cancel`` is read between batches. Returns once every point is in the sink. Raises
    Cancelled when ``cancel()`` turned true (every rank stops within a heartbeat and a batch),
    RankFailed when another rank reports an error or is lost, and whatever ``sink`` or this
    rank's own work raises; the points already in the sink stay valid.
    """
    if ranks.rank != 0:
        raise InvalidArgument("certify_on_ranks runs on rank 0; the other ranks run serve")
    assignment = Assignment(todo, ranks.size, dynamic=not work.uniform_cost, chunk=work.chunk_points)
    tally = _Tally(len(assignment.todo), work.samples_per_point, progress)
    tally.report()
    coordinator = _Coordinator(ranks, work, assignment, sink, tally)
    thread = threading.Thread(target=coordinator.serve, name="smoothviz-rank0", daemon=True)
    thread.start()
    try:
        coordinator.work_locally(cancel)
    except BaseException as exc:
        coordinator.fail(exc)
        if not isinstance(exc, (RankStopped, KeyboardInterrupt)):  # else torchrun is stopping every rank
            coordinator.wait(thread, None, STOP_GRACE_SECONDS)
        raise
    coordinator.wait(thread, cancel, None if coordinator.failure is None else STOP_GRACE_SECONDS)
    if coordinator.failure is not None:
        raise coordinator.failure
    if coordinator.cancelled:
        raise Cancelled("cancelled")
    missing = set(assignment.todo) - coordinator.done
    if missing:
        raise RankFailed(f"{len(missing)} points were not certified (the first: {min(missing)})")


# ---------------------------------------------------------------------- the other ranks
class _Worker:
    """A rank other than 0: asks rank 0 for points, certifies them, sends the results back."""

    def __init__(self, ranks: Ranks, work: PointWork) -> None:
        self.ranks, self.work = ranks, work
        self.samples = 0
        self.stopped = False
        self.last = time.monotonic()

    def exchange(self, message: Mapping) -> dict:
        self.ranks.send(0, message)
        reply = self.ranks.recv(0)[1]
        self.last = time.monotonic()
        self.stopped = self.stopped or bool(reply.get("stop"))
        return reply

    def heartbeat(self) -> bool:
        """The engine's cancel callback: tell rank 0 how far this rank is, now and then; stop if told."""
        if not self.stopped and time.monotonic() - self.last >= HEARTBEAT_SECONDS:
            self.exchange({"samples": self.samples})
        return self.stopped

    def progress(self, info: dict) -> None:
        self.samples = int(info.get("samples", 0))

    def run(self) -> None:
        reply = self.exchange({"want": self.work.chunk_points})
        while not self.stopped and reply.get("points"):
            chunks = list(_chunks(reply["points"], self.work.chunk_points))
            for k, chunk in enumerate(chunks):
                try:
                    results = self.work(chunk, self.progress, self.heartbeat)
                except Cancelled:
                    break
                self.samples = 0
                want = self.work.chunk_points if k == len(chunks) - 1 else 0
                reply = self.exchange({"results": [self.work.encode(r) for r in results], "want": want})
                if self.stopped:
                    break
        self.ranks.send(0, {"bye": True})


def serve(ranks: Ranks, work: PointWork) -> None:
    """A rank other than 0: certify the points rank 0 hands out until it says there are no more.

    An error is handed to rank 0, which records and reports it, and raised here as Reported;
    when rank 0 cannot be told, the error itself is raised.
    """
    if ranks.rank == 0:
        raise InvalidArgument("serve runs on the ranks other than 0; rank 0 runs certify_on_ranks")
    try:
        _Worker(ranks, work).run()
    except BaseException as exc:  # noqa: BLE001 - every failure is handed to rank 0, then raised
        try:
            ranks.send(0, {"error": one_line(exc)})
        except Exception:  # noqa: BLE001 - rank 0 is gone: the error itself is raised
            raise exc from None
        raise Reported(one_line(exc)) from None
