"""One certification on several ranks (smoothviz.distributed, smoothviz.launch, certify under torchrun).

In-process tests run the ranks as threads over an in-memory message network (what the wire
carries is JSON, so each message goes through json.dumps and back); the multi-process tests
start real ranks with torchrun over gloo on the CPU. Every comparison is against the same run
certified by one process: the counts, p_A, sigma and radii must be identical.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from smoothviz import certify, distributed, launch
from smoothviz.errors import Cancelled, CheckpointError, InvalidArgument
from smoothviz.models import build_model, save_checkpoint

torch.set_num_threads(1)

POINT_FIELDS = ("idx", "label", "predict", "correct", "p_a_lower", "sigma", "radius", "naive_radius", "counts")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """An untrained digits MLP: tiny, so sampling is cheap and the ranks start quickly."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits-mlp.pt"
    save_checkpoint(path, build_model("mlp", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10})
    return path


def _run(mlp: Path, sigma: str, indices: list[int], n: int = 400) -> dict:
    return {"id": None, "dataset": "digits", "split": "test", "checkpoint": str(mlp), "sigma_spec": sigma, "n0": 10,
            "n": n, "alpha": 0.01, "indices": indices, "seed": 7, "options": {}, "device": "cpu", "batch_size": 64}


def _rows(results) -> dict[int, tuple]:
    """idx -> the fields a certificate consists of, for results as objects or mappings."""
    out = {}
    for r in results:
        d = r if isinstance(r, dict) else dataclasses.asdict(r)
        out[int(d["idx"])] = tuple(d[f] for f in POINT_FIELDS)
    return out


def _single_process(prepared: certify.PreparedRun, run: dict) -> list[certify.PointResult]:
    xs, ys, sigmas = prepared.inputs(prepared.indices)
    e = prepared.engine
    return list(certify.iter_certify(
        e.classify, xs, ys, prepared.indices, prepared.sigma_fn, run["n0"], run["n"], run["alpha"], 10,
        e.batch_size, "cpu", run["seed"], float(prepared.sigma_fn.r), 64, sigmas=sigmas))


# ---------------------------------------------------------------------- an in-memory network
class Network:
    """Mailboxes between in-process 'ranks'; a message is what JSON makes of it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.boxes: dict[int, list[tuple[int, dict]]] = {r: [] for r in range(size)}
        self.cond = threading.Condition()


class FakeRanks:
    """The part of distributed.Ranks that the coordinator and the workers use."""

    def __init__(self, net: Network, rank: int) -> None:
        self.net, self.rank, self.size = net, rank, net.size

    def send(self, dst: int, message: dict) -> None:
        with self.net.cond:
            self.net.boxes[dst].append((self.rank, json.loads(json.dumps(message))))
            self.net.cond.notify_all()

    def recv(self, src: int | None = None) -> tuple[int, dict]:
        end = time.monotonic() + 60
        with self.net.cond:
            while time.monotonic() < end:
                box = self.net.boxes[self.rank]
                for k, (sender, message) in enumerate(box):
                    if src is None or sender == src:
                        del box[k]
                        return sender, message
                self.net.cond.wait(0.1)
        raise TimeoutError(f"rank {self.rank}: no message from {src} within 60 s")


@dataclasses.dataclass
class ToyResult:
    idx: int
    value: int


@dataclasses.dataclass
class ToyWork:
    """A PointWork whose points cost what ``cost(idx)`` says (seconds of sleep); value = idx**2."""

    uniform_cost: bool
    cost: object = staticmethod(lambda idx: 0.0)
    fail_at: int | None = None
    foreign: bool = False
    samples_per_point: int = 10
    chunk_points: int = 2

    def __call__(self, indices, progress, cancel):
        out = []
        for i in indices:
            time.sleep(self.cost(i))
            progress({"samples": 5})
            if cancel():
                raise Cancelled("cancelled")
            if i == self.fail_at:
                raise InvalidArgument(f"cannot certify point {i}")
            out.append(ToyResult(i + 1000 if self.foreign else i, i * i))
        return out

    def encode(self, result):
        return dataclasses.asdict(result)

    def decode(self, data):
        return ToyResult(**data)


def _spread(size: int, works: list, todo: list[int], cancel=None, progress=None):
    """Run certify_on_ranks on 'rank 0' and serve on threads; (sink, rank 0's exception, the others')."""
    net = Network(size)
    errors: dict[int, BaseException] = {}

    def serve(rank: int) -> None:
        try:
            distributed.serve(FakeRanks(net, rank), works[rank])
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to check
            errors[rank] = exc

    threads = [threading.Thread(target=serve, args=(r,), daemon=True) for r in range(1, size)]
    for t in threads:
        t.start()
    sink: list = []
    failure = None
    try:
        distributed.certify_on_ranks(FakeRanks(net, 0), works[0], todo, sink.append, progress, cancel)
    except BaseException as exc:  # noqa: BLE001
        failure = exc
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a rank did not stop"
    return sink, failure, errors


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("points", [0, 2, 7, 23])
def test_every_point_is_certified_exactly_once(size, dynamic, points) -> None:
    todo = list(range(100, 100 + 3 * points, 3))
    seen = []
    sink, failure, errors = _spread(size, [ToyWork(not dynamic) for _ in range(size)], todo, progress=seen.append)
    assert failure is None and not errors
    assert sorted(r.idx for r in sink) == todo  # no point missing, none twice (more ranks than points too)
    assert all(r.value == r.idx ** 2 for r in sink)
    assert seen[-1]["done"] == seen[-1]["total"] == points and seen[-1]["fraction"] == 1.0


def test_points_of_very_different_cost_are_handed_out_once_each() -> None:
    todo = list(range(40))
    slow = ToyWork(False, cost=lambda i: 0.05 if i % 7 == 0 else 0.0)
    sink, failure, errors = _spread(3, [slow, slow, slow], todo)
    assert failure is None and not errors
    assert sorted(r.idx for r in sink) == todo


def test_dynamic_assignment_shrinks_its_chunks_and_static_takes_strided_shards() -> None:
    dynamic = distributed.Assignment(list(range(100)), 2, dynamic=True, chunk=16)
    sizes = []
    while points := dynamic.take(len(sizes) % 2):
        sizes.append(len(points))
    assert sum(sizes) == 100 and max(sizes) == 16 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert sorted(dynamic.owner) == list(range(100))
    static = distributed.Assignment(list(range(10)), 3, dynamic=False, chunk=16)
    assert [static.take(r) for r in range(3)] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert static.take(1) == []
    with pytest.raises(InvalidArgument, match="duplicates"):
        distributed.Assignment([1, 2, 2], 2, dynamic=False, chunk=4)


def test_cancel_on_rank_zero_stops_every_rank() -> None:
    todo = list(range(60))
    works = [ToyWork(False, cost=lambda i: 0.01) for _ in range(3)]
    state = {"done": 0}
    sink, failure, errors = _spread(3, works, todo, cancel=lambda: state["done"] >= 6,
                                    progress=lambda info: state.update(done=info["done"]))
    assert isinstance(failure, Cancelled) and not errors  # every rank said bye (the threads ended)
    got = [r.idx for r in sink]
    assert len(got) == len(set(got)) and set(got) <= set(todo) and 6 <= len(got) < len(todo)


def test_an_error_on_another_rank_stops_the_run_and_names_the_rank() -> None:
    todo = list(range(30))
    works = [ToyWork(True), ToyWork(True), ToyWork(True, fail_at=5)]
    sink, failure, errors = _spread(3, works, todo)
    assert isinstance(failure, distributed.RankFailed)
    assert str(failure) == "rank 2: cannot certify point 5"
    assert isinstance(errors[2], distributed.Reported) and set(errors) == {2}
    got = [r.idx for r in sink]
    assert len(got) == len(set(got)) and 5 not in got


def test_a_result_for_a_point_the_rank_was_not_given_is_refused() -> None:
    works = [ToyWork(True), ToyWork(True, foreign=True)]
    sink, failure, _ = _spread(2, works, list(range(8)))
    assert isinstance(failure, distributed.RankFailed) and "rank 1 returned point 1001" in str(failure)
    assert all(r.idx < 1000 for r in sink)


# ---------------------------------------------------------------------- the real engine, in-process ranks
def test_knn_sigma_does_not_depend_on_the_threads_that_compute_it() -> None:
    from smoothviz.data import load_dataset
    from smoothviz.sigma import KNN

    ds = load_dataset("digits")
    got = []
    for threads in (1, 2):  # ranks sharing a machine's cores run with fewer threads than one process
        torch.set_num_threads(threads)
        knn = KNN(ds.train_x, 0.25, 0.4, 20)
        got.append((knn.m, knn(ds.test_x[::36]).tolist(), knn(ds.test_x[::3]).tolist()))
    torch.set_num_threads(1)
    assert got[0] == got[1]  # bit for bit (BLAS rounds a product differently with other thread counts)


@pytest.mark.parametrize("r, dim", [(0.0, 64), (0.01, 784)])
def test_a_radius_does_not_depend_on_the_points_computed_beside_it(r, dim) -> None:
    import numpy as np

    from smoothviz import bounds

    p_a = np.random.default_rng(0).uniform(0.55, 0.999, 40)
    together = bounds.input_dependent_radius(p_a, 0.25, r, dim)
    alone = [float(bounds.input_dependent_radius(p, 0.25, r, dim)) for p in p_a]
    split = np.concatenate([bounds.input_dependent_radius(p_a[:13], 0.25, r, dim),
                            bounds.input_dependent_radius(p_a[13:], 0.25, r, dim)])
    assert together.tolist() == alone == split.tolist()  # bit for bit: chunks differ between world sizes


@pytest.mark.parametrize("sigma", ["constant:0.25", "knn:0.25,0.4,20"])
@pytest.mark.parametrize("size", [2, 3])
def test_ranks_store_exactly_what_one_process_computes(mlp, sigma, size) -> None:
    run = _run(mlp, sigma, list(range(0, 360, 23)))
    prepared = certify.prepare_run(run)
    reference = _rows(_single_process(prepared, run))
    plan = json.loads(json.dumps(distributed.run_plan(run, prepared, 64)))  # what the other ranks receive
    if sigma.startswith("knn"):
        assert "m=" in plan["run"]["sigma_spec"]  # m computed once, on rank 0
    works = [distributed.CertifyWork.for_run(prepared, run)]
    works += [distributed.CertifyWork.for_run(distributed.prepare_rank(plan, torch.device("cpu")), plan["run"])
              for _ in range(1, size)]
    sink, failure, errors = _spread(size, works, run["indices"])
    assert failure is None and not errors
    assert _rows(sink) == reference
    assert any(row[6] > 0 for row in reference.values())  # some certified radii are compared, not only zeros


def test_a_sequential_run_is_handed_out_in_chunks_and_matches_one_process(mlp) -> None:
    """Points of a sequential rule stop after very different numbers of samples: rank 0 hands
    them out on request (dynamic assignment), and every rank's results equal one process's."""
    from smoothviz.sequential_engine import (
        SequentialResult,
        SequentialSettings,
        iter_certify_sequential,
    )

    run = {**_run(mlp, "constant:0.25", list(range(0, 360, 11)), n=4000),
           "sequential": SequentialSettings.create("fixed-radius", radius=0.1).to_dict()}
    prepared = certify.prepare_run(run)
    work = distributed.CertifyWork.for_run(prepared, run)
    assert not work.uniform_cost
    xs, ys, sigmas = prepared.inputs(prepared.indices)
    e = prepared.engine
    reference = list(iter_certify_sequential(e.classify, xs, ys, prepared.indices, sigmas, run["n0"], prepared.rule,
                                             10, e.batch_size, "cpu", run["seed"]))
    assert len({r.samples for r in reference}) > 1  # the points really cost different numbers of samples
    plan = json.loads(json.dumps(distributed.run_plan(run, prepared, 64)))
    other = distributed.CertifyWork.for_run(distributed.prepare_rank(plan, torch.device("cpu")), plan["run"])
    sink, failure, errors = _spread(3, [work, other, other], run["indices"])
    assert failure is None and not errors
    assert all(isinstance(r, SequentialResult) for r in sink)

    def by_idx(results) -> dict:
        return {r.idx: {k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in results}

    assert by_idx(sink) == by_idx(reference) and len(sink) == len(reference)


def test_a_rank_with_other_data_sigma_or_checkpoint_refuses_the_plan(mlp, tmp_path) -> None:
    run = _run(mlp, "knn:0.25,0.4,20", [0, 5, 9])
    prepared = certify.prepare_run(run)
    plan = distributed.run_plan(run, prepared, 64)
    cpu = torch.device("cpu")
    with pytest.raises(InvalidArgument, match="inputs of the run's points differ"):
        distributed.prepare_rank({**plan, "fingerprint": "0" * 64}, cpu)
    with pytest.raises(InvalidArgument, match="sigma.x. here differs from rank 0's"):
        distributed.prepare_rank({**plan, "sigmas": [s * 1.001 for s in plan["sigmas"]]}, cpu)
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, build_model("mlp", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10})
    moved = {**plan, "run": {**plan["run"], "checkpoint": str(other)}}
    with pytest.raises(CheckpointError, match="differs from rank 0's"):
        distributed.prepare_rank(moved, cpu)
    assert distributed.prepare_rank(plan, cpu).sigmas.tolist() == prepared.sigmas.tolist()


# ---------------------------------------------------------------------- torchrun's environment
def test_the_world_comes_from_torchrun_variables() -> None:
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    world = launch.world_from_env(env)
    assert (world.rank, world.local_rank, world.size, world.node, world.master) == (3, 1, 4, 1, "node0:29500")
    assert not world.is_writer and launch.distributed_world(env) == world
    assert launch.world_from_env({}) is None
    assert launch.distributed_world({**env, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}) is None
    with pytest.raises(InvalidArgument, match="contradict"):
        launch.world_from_env({**env, "RANK": "4"})
    with pytest.raises(InvalidArgument, match="is not an integer"):
        launch.world_from_env({**env, "RANK": "x"})


def test_each_rank_takes_its_own_device() -> None:
    world = launch.World(rank=1, local_rank=1, size=2, local_size=2, node=0, master="h:1")
    assert distributed.rank_device("cpu", world) == torch.device("cpu")
    with pytest.raises(InvalidArgument, match="each takes cuda:LOCAL_RANK"):
        distributed.rank_device("cuda:0", world)
    if torch.cuda.is_available():
        expected = torch.device("cuda", 1) if torch.cuda.device_count() > 1 else None
        if expected is None:
            with pytest.raises(InvalidArgument, match="no GPU of its own"):
                distributed.rank_device("auto", world)
        else:
            assert distributed.rank_device("auto", world) == expected
    else:
        assert distributed.rank_device("auto", world) == torch.device("cpu")
        with pytest.raises(InvalidArgument, match="CUDA is not available"):
            distributed.rank_device("cuda", world)


class _Failure:
    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode

    def signal_name(self) -> str:
        return "SIGKILL" if self.exitcode == -9 else "SIGTERM"


def test_a_rank_that_died_is_named_in_one_line(capsys) -> None:
    code = launch._report_failure({0: _Failure(2), 1: _Failure(-9)}, "certify")
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("smoothviz certify: rank 1 was killed by SIGKILL;") and "rerun" in lines[0]
    assert launch._report_failure({0: _Failure(1)}, "certify") == 1 and capsys.readouterr().err == ""
    # rank 0 refused the run and said so; rank 1 was then stopped by torchrun: nothing more to say
    assert launch._report_failure({0: _Failure(2), 1: _Failure(-15)}, "certify") == 2
    assert capsys.readouterr().err == ""
    assert launch._report_failure({0: _Failure(-15)}, "certify") == 1
    assert "rank 0 (the writer of the results store) was killed by SIGTERM" in capsys.readouterr().err


# ---------------------------------------------------------------------- the store records the world size
def test_the_store_records_how_many_ranks_executed_a_run(tmp_path) -> None:
    from smoothviz.errors import StoreError
    from smoothviz.store import Store

    path = tmp_path / "s.db"
    with Store(path) as store:
        run_id = store.create_run("r", "digits", "test", None, "constant:0.5", {}, 0.0, 10, 100, 0.01, "cpu",
                                  [1, 2], 0, None)
        assert store.run(run_id)["world_size"] is None  # never executed
        store.set_status(run_id, "running")
        assert store.run(run_id)["world_size"] == 1
    before = path.read_bytes()
    with Store(path, create=False) as reader:  # reading a store without the side table creates none
        assert reader.runs()["world_size"].tolist() == [1]
    assert path.read_bytes() == before
    with Store(path) as store:
        store.set_world_size(run_id, 3)
        assert store.run(run_id)["world_size"] == 3 and store.runs()["world_size"].tolist() == [3]
        store.set_status(run_id, "running")  # executed again by one process
        assert store.run(run_id)["world_size"] == 1
        store.set_world_size(run_id, 2)
        store.set_status(run_id, "done")
        store.delete_run(run_id)
        assert store._world_sizes() == {}
        with pytest.raises(StoreError, match="not found"):
            store.set_world_size(run_id, 2)
        with pytest.raises(InvalidArgument, match="world size"):
            store.set_world_size(run_id, 0)


# ---------------------------------------------------------------------- command lines through torchrun
def _verb_parser(verb: str):
    import argparse
    import importlib

    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(f"smoothviz.commands.{verb}").add_arguments(parser)
    return parser


@pytest.mark.parametrize("verb", ["certify", "predict"])
def test_every_option_has_a_spelling_that_torchrun_passes_on(verb, capsys) -> None:
    import argparse

    from torch.distributed.run import get_args_parser

    torchrun = launch.torchrun_options()
    kinds = (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreConstAction,
             argparse.BooleanOptionalAction)
    for action in _verb_parser(verb)._actions:
        assert isinstance(action, kinds) and action.nargs in (None, 0), f"{action.option_strings}: not passed on"
        safe = [o for o in action.option_strings if launch.torchrun_safe(o, torchrun)]
        assert safe, f"{'/'.join(action.option_strings)}: every spelling abbreviates a torchrun option"
        for option in safe:
            ns = get_args_parser().parse_args(["--standalone", "--nproc-per-node", "2", "-m", "smoothviz", verb,
                                               option, "1"])
            assert ns.training_script_args == [verb, option, "1"] and ns.nproc_per_node == "2"
    with pytest.raises(SystemExit):  # why --num-samples exists: torchrun refuses --n as ambiguous
        get_args_parser().parse_args(["--standalone", "-m", "smoothviz", verb, "--n", "500"])
    assert "ambiguous option: --n could match --nnodes" in capsys.readouterr().err


CERTIFY_ARGV = [
    "--dataset", "digits", "--model", "m.pt", "--sigma", "knn:0.25,0.4,20", "--alpha", "0.01", "--split", "train",
    "--indices", "0-9,20", "--batch-size", "auto", "--seed", "7", "--device", "cpu", "--allow-long", "--quiet",
    "--fast", "--no-channels-last", "--compile", "--n0", "50", "--n", "500", "--name", "a b", "--db", "x.db",
    "--run", "3", "--new", "--radii", "0,1", "--input-shape", "1,8,8", "--value-range", "0,1.5",
    "--trained-sigma", "0.25", "--processes", "2",
]


def test_the_ranks_get_the_same_arguments_spelled_for_torchrun() -> None:
    from smoothviz.commands import certify as certify_cmd

    parser = _verb_parser("certify")
    given = parser.parse_args(CERTIFY_ARGV)
    argv = launch.command_argv(certify_cmd.add_arguments, given)
    again = parser.parse_args(argv)
    assert {**vars(again), "processes": 2} == vars(given)  # the launch options stay with the launcher
    assert "--num-samples" in argv and "--run-id" in argv and "--n" not in argv and "--run" not in argv
    assert "--processes" not in argv
    torchrun = launch.torchrun_options()
    assert all(launch.torchrun_safe(a, torchrun) for a in argv if a.startswith("--"))


def test_torchrun_command_lines_and_the_dashboards_arguments() -> None:
    one = launch.torchrun_argv(["certify", "--run-id", "3"], 4, python="py")
    assert one == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone", "-m", "smoothviz",
                   "certify", "--run-id", "3"]
    two = launch.torchrun_argv(["certify"], 8, nodes=2, node_index=1, rendezvous=("node0", 29500), python="py")
    assert two[3:13] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr", "node0",
                         "--master-port", "29500"]
    assert launch.certify_job_args(5, "runs/s.db", processes=2) == [
        "certify", "--run-id", "5", "--db", "runs/s.db", "--processes", "2"]
    assert launch.certify_job_args(5, "s.db") == ["certify", "--run-id", "5", "--db", "s.db"]


@pytest.mark.parametrize("argv, message", [
    (["--processes", "2", "--nodes", "2"], "--nodes 2: give --rendezvous HOST:PORT"),
    (["--nodes", "2", "--node-index", "2", "--rendezvous", "h:1"], "--node-index 2: must be below --nodes 2"),
    (["--processes", "2", "--rendezvous", "h:1"], "--rendezvous: only needed with --nodes > 1"),
])
def test_launch_options_that_contradict_each_other_are_refused(argv, message) -> None:
    args = _verb_parser("certify").parse_args(argv)
    with pytest.raises(InvalidArgument, match=message):
        launch.check_arguments(args)


@pytest.mark.parametrize("text", ["nohost", "h:0", "h:70000", "h:x", ":1"])
def test_a_bad_rendezvous_address_is_refused(text) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        launch.rendezvous_arg(text)
    assert launch.rendezvous_arg("10.0.0.1:29500") == ("10.0.0.1", 29500)


# ---------------------------------------------------------------------- real ranks (torchrun over gloo)
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                  "SMOOTHVIZ_DB", "OMP_NUM_THREADS")
STEP_TIMEOUT = 240  # seconds any one command may take on a busy 2-core machine


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    return {**env, **extra}


def _smoothviz(args: list[str], cwd: Path, **env: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "smoothviz", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)


def _stored(db: Path, run_id: int = 1) -> int:
    """Points stored for the run so far (0 while its store does not exist yet)."""
    from smoothviz.errors import StoreError
    from smoothviz.store import Store

    try:
        with Store(db, create=False) as store:
            return store.run(run_id)["done"]
    except StoreError:
        return 0


def _wait_stored(db: Path, count: int, proc=None, limit: float = STEP_TIMEOUT) -> None:
    end = time.monotonic() + limit
    while _stored(db) < count:
        assert proc is None or proc.poll() is None, "the command ended before storing any point"
        assert time.monotonic() < end, f"fewer than {count} points stored after {limit} s"
        time.sleep(0.02)


def _ranks_of(launcher: int) -> dict[int, int]:
    """rank -> pid of the ranks a launcher process started (its children carrying RANK)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode().split("\0") if "=" in kv)
            found[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def _check_against_one_process(db: Path, run_id: int = 1, world_size: int | None = None) -> None:
    """The stored run is complete, each point once, and equal to the run certified by one process."""
    from smoothviz.store import Store

    with Store(db, create=False) as store:
        run, df = store.run(run_id), store.results(run_id)
    assert run["status"] == "done" and run["done"] == run["total"]
    assert sorted(df["idx"]) == sorted(run["indices"]) and df["idx"].is_unique
    if world_size is not None:
        assert run["world_size"] == world_size
    prepared = certify.prepare_run(run)
    assert _rows(df.to_dict("records")) == _rows(_single_process(prepared, run))


def _certify_args(mlp: Path, db: Path, sigma: str, points: int, n: int) -> list[str]:
    return ["certify", "--model", str(mlp), "--sigma", sigma, "--points", str(points), "--n0", "10",
            "--num-samples", str(n), "--batch-size", "256", "--seed", "3", "--db", str(db), "--quiet"]


@pytest.mark.slow
def test_three_ranks_under_torchrun_store_exactly_what_one_process_computes(mlp, tmp_path) -> None:
    import subprocess
    import sys

    db = tmp_path / "s.db"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m", "smoothviz",
            *_certify_args(mlp, db, "knn:0.25,0.4,20", 2, 3000)]  # more ranks than points
    done = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=STEP_TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run 1 (" in done.stdout and ": done, 2/2 points" in done.stdout  # rank 0 alone reports
    _check_against_one_process(db, world_size=3)


@pytest.mark.slow
def test_a_rank_killed_mid_run_ends_it_with_a_status_and_a_rerun_completes_it(mlp, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from smoothviz.store import Store

    db = tmp_path / "s.db"
    args = _certify_args(mlp, db, "constant:0.25", 60, 20000)
    proc = subprocess.Popen([sys.executable, "-m", "smoothviz", *args, "--processes", "2"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stored(db, 2, proc)
        ranks = _ranks_of(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[0], signal.SIGSTOP)  # the writer holds still, so the run cannot finish meanwhile
        assert _stored(db) < 60
        os.kill(ranks[1], signal.SIGKILL)
        time.sleep(1.0)
        os.kill(ranks[0], signal.SIGCONT)
        _out, err = proc.communicate(timeout=STEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err
    assert "rank 1 was killed by SIGKILL" in err and "rerun the same command" in err
    with Store(db, create=False) as store:
        run = store.run(1)
    assert run["status"] == "failed" and "rerun the same command" in run["message"]
    assert 2 <= run["done"] < run["total"] == 60
    again = _smoothviz([*args, "--processes", "3"], tmp_path)  # the same command, another number of ranks
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming ({run['done']} of 60 points stored)" in again.stderr
    _check_against_one_process(db, world_size=3)


@pytest.mark.slow
def test_the_dashboards_launcher_runs_a_two_process_job_with_progress_and_cancel(mlp, tmp_path) -> None:
    import os
    import signal

    from smoothviz.jobs import CANCELLED, DONE, JobManager, certify_job_id
    from smoothviz.sigma import parse_sigma_spec
    from smoothviz.store import Store

    db = tmp_path / "s.db"
    spec = "knn:0.25,0.4,20"
    with Store(db) as store:
        run_id = store.create_run("job", "digits", "test", str(mlp), spec, parse_sigma_spec(spec), 0.4, 10, 10000,
                                  0.001, "cpu", list(range(0, 360, 9)), 3, 256)
    jobs = JobManager(tmp_path / "jobs")
    job = jobs.start_certify(run_id, db, processes=2)
    assert job.id == certify_job_id(run_id) and job.extra["processes"] == 2
    _wait_stored(db, 2)
    with Store(db, create=False) as store:
        progress = store.progress(run_id)  # what the Certify page polls: every rank's points, stored by rank 0
    assert progress["status"] == "running" and 2 <= progress["done"] < 40
    ranks = _ranks_of(job.pid)
    os.kill(ranks[0], signal.SIGSTOP)  # hold the writer so that the cancel surely comes before the end
    jobs.cancel(job.id, grace_s=60)
    time.sleep(0.7)  # longer than the writer's pause between two looks at the cancel flag
    os.kill(ranks[0], signal.SIGCONT)
    assert jobs.wait(job.id, timeout=STEP_TIMEOUT).status == CANCELLED, jobs.log_tail(job.id)
    with Store(db, create=False) as store:
        run = store.run(run_id)
    assert run["status"] == "cancelled" and run["done"] < 40 and run["world_size"] == 2
    assert all(not _alive_pid(pid) for pid in ranks.values())  # every rank stopped
    again = jobs.start_certify(run_id, db, processes=2)
    assert jobs.wait(again.id, timeout=STEP_TIMEOUT).status == DONE, jobs.log_tail(again.id)
    engine = jobs.engine_progress(again.id)
    assert engine is not None and engine.done == engine.total == 40 - run["done"]  # rank 0's bar, all ranks
    _check_against_one_process(db, run_id, world_size=2)


def _alive_pid(pid: int) -> bool:
    from smoothviz.processes import pid_alive

    return pid_alive(pid)


@pytest.mark.slow
def test_predict_on_two_ranks_writes_what_one_process_predicts(mlp, tmp_path) -> None:
    out = tmp_path / "predict.tsv"
    done = _smoothviz(["predict", "--model", str(mlp), "--sigma", "constant:0.25", "--points", "9", "--n", "500",
                       "--alpha", "0.01", "--seed", "4", "--batch-size", "64", "--out", str(out), "--quiet",
                       "--processes", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "9 points (digits, constant:0.25, n=500, alpha=0.01)" in done.stdout
    from smoothviz.points import evenly_spaced

    prepared = certify.prepare_run(_run(mlp, "constant:0.25", evenly_spaced(9, 360), n=500))
    xs, ys, sigmas = prepared.inputs(prepared.indices)
    e = prepared.engine
    expected = certify.predict_points(e.classify, xs, ys, prepared.indices, prepared.sigma_fn, 500, 0.01, 10,
                                      e.batch_size, "cpu", 4, sigmas=sigmas)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    assert [tuple(line.split("\t")[:4]) for line in lines[1:]] == [
        (str(r.idx), str(r.label), str(r.predict), str(int(r.correct))) for r in expected]


@pytest.mark.slow
def test_a_run_refused_on_rank_zero_is_one_line_and_writes_nothing(tmp_path) -> None:
    db = tmp_path / "s.db"
    done = _smoothviz(["certify", "--model", str(tmp_path / "absent.pt"), "--points", "3", "--db", str(db),
                       "--processes", "2"], tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"smoothviz certify: error: checkpoint {tmp_path / 'absent.pt'} not found"]
    assert not db.exists()


@pytest.mark.slow
def test_a_rendezvous_that_nobody_answers_is_one_line(mlp, tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "s.db"
    done = _smoothviz([*_certify_args(mlp, db, "constant:0.25", 3, 100), "--nodes", "2", "--node-index", "1",
                       "--rendezvous", f"127.0.0.1:{port}"], tmp_path, SMOOTHVIZ_RENDEZVOUS_TIMEOUT="1")
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"smoothviz certify: error: the ranks could not start at 127.0.0.1:{port}: ")
    assert not db.exists()


# ---------------------------------------------------------------------- bench-distributed
def test_scaling_efficiency_and_its_table() -> None:
    import argparse

    from smoothviz.commands import bench_distributed as bd

    assert bd.ranks_list("2,1,2") == [1, 2]
    for bad in ("2,4", "0,1", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bd.ranks_list(bad)
    rows = [bd.Measurement(1, 2, 64, 4.0, None), bd.Measurement(2, 1, 64, 2.5, True)]
    assert bd.efficiency(rows[1].rate, rows[0].rate, 2, one_device_per_rank=False) == pytest.approx(1.6)
    assert bd.efficiency(rows[1].rate, rows[0].rate, 2, one_device_per_rank=True) == pytest.approx(0.8)
    table = bd.format_table(rows, one_device_per_rank=False).splitlines()
    assert table[1].split() == ["1", "2", "4.000", "16", "1.00", "reference"]
    assert table[2].split() == ["2", "1", "2.500", "25.6", "1.60", "identical"]
    assert "share this CPU's cores" in table[-1]
    assert "DIFFERENT" in bd.format_table([rows[0], bd.Measurement(2, 1, 64, 2.5, False)], False)


@pytest.mark.slow
def test_bench_distributed_measures_one_and_two_ranks_on_the_same_inputs(mlp, tmp_path) -> None:
    out = tmp_path / "bench.json"
    done = _smoothviz(["bench-distributed", "--model", str(mlp), "--sigma", "constant:0.25", "--points", "6",
                       "--n", "300", "--processes", "1,2", "--json", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[1].split()[0] == "1" and lines[1].split()[-1] == "reference"
    assert lines[2].split()[0] == "2" and lines[2].split()[-1] == "identical"  # counts equal to one rank's
    record = json.loads(out.read_text())
    assert [r["ranks"] for r in record["rows"]] == [1, 2] and all(r["seconds"] > 0 for r in record["rows"])


@pytest.mark.slow
def test_two_nodes_meeting_at_a_rendezvous_certify_one_run(mlp, tmp_path) -> None:
    """The documented two-machine launch, both 'machines' on this one: node 0 holds the store."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, elsewhere = tmp_path / "s.db", tmp_path / "node1"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "smoothviz", *_certify_args(mlp, db, "knn:0.25,0.4,20", 10, 2000),
               "--nodes", "2", "--rendezvous", f"127.0.0.1:{port}"]
    second = subprocess.Popen([*command, "--node-index", "1"], cwd=elsewhere, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = subprocess.run([*command, "--node-index", "0"], cwd=tmp_path, env=_env(), capture_output=True,
                               text=True, timeout=STEP_TIMEOUT, check=False)
        out, err = second.communicate(timeout=STEP_TIMEOUT)
    finally:
        if second.poll() is None:
            second.kill()
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + err[-2000:]
    assert out == "" and err == "" and list(elsewhere.iterdir()) == []  # node 1 says and writes nothing
    _check_against_one_process(db, world_size=2)


class _RefusingRanks:
    """Rank 0's view of a world whose rank 1 refuses the plan."""

    size = 2

    def __init__(self) -> None:
        self.shared: list = []

    def share(self, message=None) -> dict:
        self.shared.append(message)
        return dict(message or {})

    def agree(self, error):
        return "rank 1: sigma(x) here differs from rank 0's by up to 0.5 (relative)"


def test_a_run_that_another_rank_refuses_is_removed_when_new_failed_when_recorded_and_kept_when_resumed(
        mlp, tmp_path) -> None:
    from smoothviz.certify import prepare_run
    from smoothviz.commands._torchrun import _RankZero
    from smoothviz.store import Store

    with Store(tmp_path / "s.db") as store:
        config = dict(dataset="digits", split="test", checkpoint=str(mlp), sigma_spec="constant:0.25", sigma_params={},
                      r=0.0, n0=10, n=100, alpha=0.01, device="cpu", indices=[0, 1, 2], seed=0, batch_size=None)
        fresh = store.create_run("fresh", **config)
        recorded = store.create_run("recorded", **config)  # as the dashboard records a run it then starts
        resumed = store.create_run("resumed", **config)
        prepared = prepare_run(store.run(fresh))
        store.add_result(resumed, dict(idx=0, label=0, predict=0, correct=True, p_a_lower=0.9, sigma=0.25, radius=0.3,
                                       naive_radius=0.3, counts=[0] * 10, seconds=0.1))
        store.set_status(resumed, "cancelled")
        for run_id, new_run in ((fresh, True), (recorded, False), (resumed, False)):
            with pytest.raises(distributed.RankFailed, match="rank 1: sigma"):
                _RankZero(_RefusingRanks(), None, new_run=new_run).certify(store, run_id, prepared=prepared)
        assert sorted(store.runs()["id"]) == [recorded, resumed]
        assert store.run(recorded)["status"] == "failed" and store.run(recorded)["message"].startswith("rank 1: sigma")
        assert store.done_indices(resumed) == {0} and store.run(resumed)["status"] == "cancelled"
