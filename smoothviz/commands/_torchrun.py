"""``certify`` and ``predict`` when torchrun runs them on several ranks (``smoothviz.distributed``).

Rank 0 runs the single-process verb as it is (its checks, the estimate, the store or the output
file, the progress bar, the summary) with one step replaced: where the verb executes the run,
rank 0 shares the run with the other ranks, waits until every one of them has prepared and
checked it on its own device, and then executes it with the points spread over all of them.
The other ranks never open the store: they prepare rank 0's plan and certify the points rank 0
hands them. A rank that refuses the run (another checkpoint, other data, no GPU of its own) is
named by rank 0 in one line, and every rank exits with code 2, before any point is sampled.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Callable, Iterator

from smoothviz.errors import Cancelled, InvalidArgument

# The engine step of a verb that rank 0 replaces: certify's run_certification(store, run_id,
# progress=, prepared=) -> status, predict's predict_here(prepared, run, progress) -> results.
Step = Callable[..., object]


@contextlib.contextmanager
def _sigterm_ends_the_run(store, run_id: int) -> Iterator[None]:
    """While rank 0 executes the run, SIGTERM (torchrun stopping every rank) ends it with a status:
    cancelled when the store asks for it, else RankStopped; a second SIGTERM is ignored."""
    from smoothviz.distributed import RankStopped

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if store.cancel_requested(run_id):
            raise Cancelled("cancelled")
        raise RankStopped("stopped by SIGTERM: torchrun stops every rank when one of them ends or when it is "
                          "stopped itself; rerun the same command to resume the missing points")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _RankZero:
    """Rank 0's side of the start: the plan is shared exactly once, or else the reason it is not."""

    def __init__(self, ranks, batch_size: int | str | None, new_run: bool = False) -> None:
        self.ranks, self.batch_size, self.new_run = ranks, batch_size, new_run
        self.shared = False

    def refuse(self, error: str) -> None:
        """Tell the other ranks that there is no run to execute (they exit with code 2, quietly)."""
        if not self.shared:
            self.shared = True
            self.ranks.share({"error": error})

    def _agree(self, run: dict, prepared) -> None:
        """Share the plan of ``run``; RankFailed naming the first rank that refuses it."""
        from smoothviz import distributed

        self.shared = True
        self.ranks.share(distributed.run_plan(run, prepared, self.batch_size or run.get("batch_size")))
        verdict = self.ranks.agree(None)
        if verdict is not None:
            raise distributed.RankFailed(verdict)

    def certify(self, store, run_id: int, progress=None, prepared=None) -> str:
        """``certify.run_certification`` with every rank taking part; the run's final status."""
        from smoothviz import distributed
        from smoothviz.certify import run_certification

        if prepared is None:
            raise InvalidArgument("several ranks execute a prepared run only")
        run = store.run(run_id)
        try:
            self._agree(run, prepared)
        except distributed.RankFailed as exc:
            if run["status"] == "pending" and not store.done_indices(run_id):
                if self.new_run:  # created by this command and never started: a refusal writes nothing
                    store.delete_run(run_id)
                else:  # a run recorded beforehand (the dashboard's) says why it did not start
                    store.set_status(run_id, "failed", str(exc))
            raise

        def distribute(prepared, run, todo, sink, progress, cancel) -> None:
            store.set_world_size(int(run["id"]), self.ranks.size)
            distributed.certify_on_ranks(self.ranks, distributed.CertifyWork.for_run(prepared, run), todo, sink,
                                         progress, cancel)

        with _sigterm_ends_the_run(store, run_id):
            return run_certification(store, run_id, progress=progress, prepared=prepared, distribute=distribute)

    def predict(self, prepared, run: dict, progress) -> list:
        """PREDICT of every point of ``prepared`` with every rank taking part, in the run's order."""
        from smoothviz import distributed

        self._agree(run, prepared)
        found: dict = {}
        distributed.certify_on_ranks(self.ranks, _predict_work(prepared, run), prepared.indices,
                                     lambda r: found.__setitem__(int(r.idx), r), progress)
        return [found[i] for i in prepared.indices]


def _predict_work(prepared, run: dict):
    from smoothviz import distributed

    return distributed.PredictWork(prepared, int(run["n"]), float(run["alpha"]), int(run["seed"] or 0))


def _certify_work(prepared, run: dict):
    from smoothviz import distributed

    return distributed.CertifyWork.for_run(prepared, run)


def _worker(ranks, device, device_error: str | None, make_work, trust_code: bool) -> int:
    """A rank other than 0: prepare rank 0's plan, agree, then certify what rank 0 hands out."""
    from smoothviz import distributed

    plan = ranks.share()
    if "error" in plan:
        return 2
    error, prepared = device_error, None
    if error is None:
        try:
            prepared = distributed.prepare_rank(plan, device, trust_code)
        except Exception as exc:  # noqa: BLE001 - any refusal is reported by rank 0, in one line
            error = distributed.one_line(exc)
    if ranks.agree(error) is not None:
        return 2
    try:
        distributed.serve(ranks, make_work(prepared, plan["run"]))
    except distributed.Reported:
        return 2
    return 0


def _on_ranks(args: argparse.Namespace, rank_zero: Callable[[_RankZero], int], make_work) -> int:
    """Join the other ranks; rank 0 runs ``rank_zero``, the others serve ``make_work``."""
    import torch

    from smoothviz import distributed, launch
    from smoothviz.device import keep_cpu_buffers

    launch.check_arguments(args)
    world = launch.distributed_world()
    if world is None:
        raise InvalidArgument("several ranks: not started by torchrun with more than one process")
    keep_cpu_buffers()
    try:
        device, device_error = distributed.rank_device(args.device, world), None
    except InvalidArgument as exc:
        device, device_error = torch.device("cpu"), str(exc)
    with distributed.Ranks.joined(world, device) as ranks:
        if ranks.rank != 0:
            # the same command line on every rank: the code a model runs was allowed on each
            trust = bool(getattr(args, "model_code", None) or getattr(args, "trust_archive", False))
            return _worker(ranks, device, device_error, make_work, trust)
        zero = _RankZero(ranks, args.batch_size, new_run=getattr(args, "run", None) is None)
        try:
            if device_error is not None:
                raise InvalidArgument(device_error)
            return rank_zero(zero)
        except BaseException as exc:
            zero.refuse(distributed.one_line(exc))
            raise


def certify(args: argparse.Namespace, verb: Callable[[argparse.Namespace, Step], int]) -> int:
    """``smoothviz certify`` on one rank of several: rank 0 runs ``verb(args, execute)`` with
    ``execute`` standing in for ``certify.run_certification``; the other ranks serve it."""
    return _on_ranks(args, lambda zero: verb(args, zero.certify), _certify_work)


def predict(args: argparse.Namespace, verb: Callable[[argparse.Namespace, Step], int]) -> int:
    """``smoothviz predict`` on one rank of several: rank 0 runs ``verb(args, predict)`` with the
    points spread over every rank; the other ranks serve it."""
    return _on_ranks(args, lambda zero: verb(args, zero.predict), _predict_work)
