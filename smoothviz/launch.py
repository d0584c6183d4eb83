"""Starting one run on many processes: torchrun's environment, its command lines, and a launcher.

A certification spans several processes (one per GPU, several machines) through PyTorch's own
runtime: ``torchrun`` starts the processes ("ranks") and sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in each; ``smoothviz.distributed`` then shares the work among them.
This module holds what needs no torch: reading that environment, the verbs' launch options
(``--processes``, ``--nodes``, ``--node-index``, ``--rendezvous``), the command line the ranks
run, and ``launch``, which runs torchrun's launcher inside this process so that its failures
become one line instead of torchrun's report.

torchrun's parser reads every option of the command it starts, and refuses any that abbreviates
one of its own options ("--n 500": ambiguous with --nnodes, --nproc-per-node, ...). The command
lines built here therefore spell each option so that no torchrun option starts with it
(``torchrun_safe``); the verbs offer such a spelling of every option (``--num-samples`` for
``--n``, ``--run-id`` for ``--run``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from smoothviz.commands._args import positive_int
from smoothviz.errors import InvalidArgument, SmoothvizError

# The options of the launcher itself: never passed on to the ranks.
LAUNCH_DESTS = ("processes", "nodes", "node_index", "rendezvous")
# Seconds a node waits for the others to join (torchrun's rendezvous), unless
# $SMOOTHVIZ_RENDEZVOUS_TIMEOUT says otherwise.
RENDEZVOUS_TIMEOUT_S = 600
RENDEZVOUS_TIMEOUT_ENV = "SMOOTHVIZ_RENDEZVOUS_TIMEOUT"
PROCESSES_MAX = 1024  # ranks per node; torchrun itself has no limit, but more is a typo
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_HOST_PORT = re.compile(r"^\[?([A-Za-z0-9_.:-]+?)\]?:([0-9]{1,5})$")


class LaunchError(SmoothvizError):
    """torchrun could not start or join the ranks (a bad address, a node that never came)."""


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun launch.

    ``rank`` numbers the process among all ``size`` ranks (rank 0 owns the results store),
    ``local_rank`` among the ``local_size`` ranks of its machine (it picks the GPU), ``node``
    numbers the machine.
    """

    rank: int
    local_rank: int
    size: int
    local_size: int
    node: int
    master: str

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the results store (rank 0 alone does)."""
        return self.rank == 0


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    text = env.get(key)
    if text is None and default is not None:
        return default
    try:
        return int(str(text).strip())
    except ValueError:
        raise InvalidArgument(f"${key}={text!r} is not an integer (torchrun sets it)") from None


def world_from_env(env: Mapping[str, str] | None = None) -> World | None:
    """The World that torchrun's variables describe, or None outside torchrun.

    InvalidArgument in one line when the variables contradict each other.
    """
    env = os.environ if env is None else env
    if not all(key in env for key in _TORCHRUN_ENV):
        return None
    size = _env_int(env, "WORLD_SIZE")
    rank = _env_int(env, "RANK")
    local_rank = _env_int(env, "LOCAL_RANK")
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", size)
    node = _env_int(env, "GROUP_RANK", 0)
    if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < max(local_size, 1)):
        raise InvalidArgument(f"torchrun's variables contradict each other: RANK={rank}, LOCAL_RANK={local_rank}, "
                              f"WORLD_SIZE={size}, LOCAL_WORLD_SIZE={local_size}")
    return World(rank, local_rank, size, local_size, node, f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}")


def distributed_world(env: Mapping[str, str] | None = None) -> World | None:
    """The World when this process is one of several ranks; None for a single process."""
    world = world_from_env(env)
    return world if world is not None and world.size > 1 else None


# ---------------------------------------------------------------------- launch options
def rendezvous_arg(text: str) -> tuple[str, int]:
    """HOST:PORT of the node that holds the rendezvous (node 0)."""
    match = _HOST_PORT.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1 to 65535")
    return match.group(1), port


def processes_arg(text: str) -> int:
    """A number of ranks per node, or of nodes: 1 to PROCESSES_MAX."""
    value = positive_int(text)
    if value > PROCESSES_MAX:
        raise argparse.ArgumentTypeError(f"{value} exceeds {PROCESSES_MAX}")
    return value


def node_index_arg(text: str) -> int:
    """A node's index: 0 to PROCESSES_MAX - 1 (checked against --nodes later)."""
    stripped = str(text).strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 6:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer from 0 to {PROCESSES_MAX - 1}")
    value = int(stripped)
    if value >= PROCESSES_MAX:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to {PROCESSES_MAX - 1}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--processes``, ``--nodes``, ``--node-index``, ``--rendezvous``: run on several processes."""
    group = parser.add_argument_group("several processes (torchrun; see README, 'Many GPUs and machines')")
    group.add_argument("--processes", type=processes_arg, default=1, metavar="K",
                       help="ranks on this machine, one per GPU (default 1: this process alone)")
    group.add_argument("--nodes", type=processes_arg, default=1, metavar="M",
                       help="machines taking part (default 1); each runs the same command")
    group.add_argument("--node-index", type=node_index_arg, default=0, metavar="I",
                       help="this machine's index, 0 to M-1; node 0 holds the results store")
    group.add_argument("--rendezvous", type=rendezvous_arg, default=None, metavar="HOST:PORT",
                       help="address of node 0 where the nodes meet (needed with --nodes > 1)")


def requested(args: argparse.Namespace) -> bool:
    """Whether the launch options ask for more than this process."""
    return getattr(args, "processes", 1) > 1 or getattr(args, "nodes", 1) > 1


def check_arguments(args: argparse.Namespace) -> None:
    """The launch options agree with each other and with the environment (one-line errors)."""
    nodes, index = getattr(args, "nodes", 1), getattr(args, "node_index", 0)
    if world_from_env() is not None and (requested(args) or args.rendezvous is not None):
        raise InvalidArgument("--processes/--nodes/--rendezvous: this process already runs under torchrun, "
                              "which sets the processes; leave these options out")
    if nodes > 1 and args.rendezvous is None:
        raise InvalidArgument(f"--nodes {nodes}: give --rendezvous HOST:PORT, the address of node 0")
    if index >= nodes:
        raise InvalidArgument(f"--node-index {index}: must be below --nodes {nodes}")
    if nodes == 1 and args.rendezvous is not None:
        raise InvalidArgument("--rendezvous: only needed with --nodes > 1 (one machine meets on itself)")


# ---------------------------------------------------------------------- command lines
def torchrun_options() -> list[str]:
    """Every option string of torchrun's parser (torch.distributed.run)."""
    from torch.distributed.run import get_args_parser

    return sorted(s for s in get_args_parser()._option_string_actions if s.startswith("--"))


def torchrun_safe(option: str, torchrun: Sequence[str]) -> bool:
    """Whether torchrun's parser leaves ``option`` to the command: no torchrun option starts with it.

    argparse accepts any unambiguous prefix of an option, so an option of the command that is a
    prefix of one of torchrun's (or equal to it) is read as torchrun's or refused as ambiguous.
    """
    name = option.split("=", 1)[0]
    return not any(t.startswith(name) for t in torchrun)


def _spelling(action: argparse.Action, torchrun: Sequence[str], negative: bool = False) -> str:
    """The first long option string of ``action`` that torchrun leaves alone."""
    options = [s for s in action.option_strings if s.startswith("--") and s.startswith("--no-") == negative]
    for option in options:
        if torchrun_safe(option, torchrun):
            return option
    raise InvalidArgument(f"option {'/'.join(action.option_strings)} has no spelling that torchrun leaves "
                          "to the command")


def command_argv(add_arguments: Callable[[argparse.ArgumentParser], None], args: argparse.Namespace,
                 torchrun: Sequence[str] | None = None, drop: Sequence[str] = LAUNCH_DESTS) -> list[str]:
    """The options that give ``args`` back when a verb parser (``add_arguments``) reads them.

    Options left at their defaults are left out, and so are the ``drop`` destinations; each
    option is spelled so that torchrun passes it on (``torchrun_safe``). Positional arguments
    are not supported (the verbs that run on several processes have none).
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    torchrun = torchrun_options() if torchrun is None else torchrun
    out: list[str] = []
    written: set[str] = set()
    for action in parser._actions:
        dest = action.dest
        if dest in drop or dest in written or not action.option_strings:
            continue
        value = getattr(args, dest, action.default)
        if value == action.default or value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(_spelling(action, torchrun, negative=not value))
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
            if value != action.const:
                continue
            out.append(_spelling(action, torchrun))
        elif isinstance(action, argparse._StoreAction) and action.nargs is None:
            out += [_spelling(action, torchrun), _text(value)]
        else:
            raise InvalidArgument(f"option {'/'.join(action.option_strings)} cannot be passed on to the ranks")
        written.add(dest)
    return out


def _text(value: object) -> str:
    """An option's value as the command line spells it (paths, numbers exactly, comma-separated tuples)."""
    if isinstance(value, tuple):  # --input-shape 3,32,32, --value-range 0.0,1.0
        return ",".join(_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def torchrun_argv(command: Sequence[str], processes: int, *, nodes: int = 1, node_index: int = 0,
                  rendezvous: tuple[str, int] | None = None, python: str | None = None) -> list[str]:
    """The torchrun command line that runs ``python -m smoothviz <command>`` on ``processes`` ranks.

    One machine: ``--standalone`` (a free port on localhost). Several: a static rendezvous at
    node 0's ``rendezvous`` address, this machine being ``node_index`` (node 0 holds the store).
    """
    head = [python or sys.executable, "-m", "torch.distributed.run", *_torchrun_options(processes, nodes,
                                                                                         node_index, rendezvous)]
    return [*head, "-m", "smoothviz", *command]


def _torchrun_options(processes: int, nodes: int, node_index: int, rendezvous: tuple[str, int] | None) -> list[str]:
    options = ["--nproc-per-node", str(processes)]
    if nodes == 1:
        return [*options, "--standalone"]
    if rendezvous is None:
        raise InvalidArgument(f"--nodes {nodes}: give --rendezvous HOST:PORT, the address of node 0")
    host, port = rendezvous
    return [*options, "--nnodes", str(nodes), "--node-rank", str(node_index), "--master-addr", host,
            "--master-port", str(port), "--rdzv-conf", f"timeout={rendezvous_timeout()}"]


def rendezvous_timeout() -> int:
    """Seconds a node waits for the others: $SMOOTHVIZ_RENDEZVOUS_TIMEOUT, else RENDEZVOUS_TIMEOUT_S."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV, "").strip()
    if not text:
        return RENDEZVOUS_TIMEOUT_S
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"${RENDEZVOUS_TIMEOUT_ENV}={text!r} is not a whole number of seconds") from None
    if value < 1:
        raise InvalidArgument(f"${RENDEZVOUS_TIMEOUT_ENV}={value} must be >= 1")
    return value


def certify_job_args(run_id: int, db: str | os.PathLike, processes: int = 1, device: str | None = None) -> list[str]:
    """The arguments of ``python -m smoothviz`` that execute store run ``run_id`` on ``processes``
    ranks of this machine (what the dashboard's job runner passes to ``JobManager.start``)."""
    args = ["certify", "--run-id", str(int(run_id)), "--db", str(db)]
    if device:
        args += ["--device", device]
    if processes > 1:
        args += ["--processes", str(int(processes))]
    return args


# ---------------------------------------------------------------------- launching
@contextlib.contextmanager
def _quiet_torchrun() -> object:
    """torchrun's own log lines (its OMP_NUM_THREADS notice, its failure report) silenced."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(("torch.distributed.elastic", "torch.distributed.run",
                                   "torch.distributed.launcher"))]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_cpp_logs() -> object:
    """torch imported with its C++ log (c10d's connection retries, with their C++ stack frames)
    limited to fatal messages in this process; the ranks it starts keep their usual level."""
    before = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
        else:
            os.environ["TORCH_CPP_LOG_LEVEL"] = before


def _threads_per_rank(processes: int) -> str:
    """OMP_NUM_THREADS for each rank: the machine's cores shared evenly (at least one)."""
    return str(max(1, (os.cpu_count() or 1) // processes))


def launch(verb: str, args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None]) -> int:
    """Run ``smoothviz <verb>`` with ``args`` on the ranks the launch options ask for; its exit code.

    torchrun's launcher runs in this process: it starts the ranks on this machine (and meets
    the other machines' launchers at the rendezvous), each rank runs the verb under torchrun,
    and rank 0 reports as a single process would. A rank that dies (a signal, an exit without
    a report) is named in one line; rank 0's own exit code is returned.
    """
    check_arguments(args)
    with _quiet_cpp_logs():
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

    command = [verb, *command_argv(add_arguments, args)]
    options = _torchrun_options(args.processes, args.nodes, args.node_index, args.rendezvous)
    ns = parse_args([*options, "-m", "smoothviz"])
    ns.training_script_args = command  # set here: torchrun's parser never sees the verb's options
    os.environ.setdefault("OMP_NUM_THREADS", _threads_per_rank(args.processes))
    where = "" if args.rendezvous is None else f" at {args.rendezvous[0]}:{args.rendezvous[1]}"
    try:
        with _quiet_torchrun():
            run(ns)
    except ChildFailedError as exc:
        return _report_failure(exc.failures, verb)
    except SignalException as exc:
        print(f"smoothviz {verb}: stopped by {exc.sigval.name}; every rank was stopped (rerun the same command "
              "to resume)", file=sys.stderr)
        return 128 + int(exc.sigval)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - rendezvous and start-up failures of torchrun's launcher
        raise LaunchError(f"the ranks could not start{where}: {_first_line(exc)}") from None
    return 0


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# Exit codes with which a rank has reported for itself (the CLI's: cancelled or refused, user error,
# Ctrl-C); anything else, a signal in particular, is reported by the launcher.
_REPORTED = (1, 2, 130)


def _report_failure(failures: Mapping[int, object], verb: str) -> int:
    """Name the ranks that ended without a report of their own; rank 0's exit code (else 1).

    torchrun stops the other ranks with SIGTERM once one has failed, so a rank ended by SIGTERM
    is named only when no rank says why it all ended.
    """
    codes = {rank: int(getattr(f, "exitcode", 1)) for rank, f in failures.items()}
    reported = any(code in _REPORTED for code in codes.values())
    unreported = [r for r, code in sorted(codes.items()) if code not in _REPORTED and code != -signal.SIGTERM]
    if not unreported and not reported:
        unreported = sorted(codes)
    for rank in unreported:
        code, failure = codes[rank], failures[rank]
        how = f"was killed by {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        role = " (the writer of the results store)" if rank == 0 else ""
        print(f"smoothviz {verb}: rank {rank}{role} {how}; the other ranks were stopped; rerun the same "
              "command to resume the missing points", file=sys.stderr)
    code = codes.get(0)
    return code if code in _REPORTED else 1
