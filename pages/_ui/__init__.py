"""Shared helpers for the dashboard pages: page frame, paths, cached loaders, job manager.

Lives in a sub-folder of ``pages/`` because Streamlit's legacy page discovery lists every
``pages/*.py`` file (even ones starting with ``_``) but does not look into sub-folders.
Pages import it as ``from pages._ui import ...`` (Streamlit puts the app's folder on sys.path).
Loaders are cached by small identifiers (dataset name, checkpoint path + mtime), never tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from smoothviz.errors import SmoothvizError

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "overview": "app.py",
    "theory": "pages/1_Theory.py",
    "certify": "pages/2_Certify.py",
    "compare": "pages/3_Compare_runs.py",
    "explorer": "pages/4_Sample_explorer.py",
    "playground": "pages/5_2D_playground.py",
    "train": "pages/6_Train.py",
    "counterexamples": "pages/7_Counterexamples.py",
    "tradeoffs": "pages/8_Trade_offs.py",
}

NAV = (
    ("overview", "Overview", ":material/home:"),
    ("theory", "Theory: curse of dimensionality", ":material/functions:"),
    ("certify", "Certify", ":material/verified:"),
    ("compare", "Compare runs", ":material/compare_arrows:"),
    ("explorer", "Sample explorer", ":material/image_search:"),
    ("playground", "2-D playground", ":material/scatter_plot:"),
    ("train", "Train", ":material/model_training:"),
    ("counterexamples", "Counterexamples", ":material/gpp_bad:"),
    ("tradeoffs", "Trade-offs", ":material/tune:"),
)


ERROR_ICON = ":material/error:"
WARNING_ICON = ":material/warning:"
ACTIVE = ("pending", "running")  # store statuses of a run that is about to run or running


def setup_page(title: str, icon: str) -> None:
    """Page config and the shared sidebar; call first in every page.

    ``icon`` is a Material icon such as ``":material/verified:"`` (Streamlit ships the font; emoji
    need an emoji font the machine may lack and then render as boxes).
    """
    st.set_page_config(page_title=f"{title} · smoothviz", page_icon=icon, layout="wide")
    st.session_state["_page_before"] = st.session_state.get("_page_now")
    st.session_state["_page_now"] = title
    with st.sidebar:
        # Our own menu (config: client.showSidebarNavigation = false) so that the entry page is
        # called "Overview" rather than after its file name.
        for key, label, nav_icon in NAV:
            st.page_link(PAGES[key], label=label, icon=nav_icon)
        st.divider()
        st.caption(f"Results store: `{display_path(db_path())}`")
        for job in [j for j in job_manager().jobs() if j.status == "running" and j.kind != "certify"][:5]:
            st.caption(f":material/hourglass_top: {job.kind} job `{job.id}` is running")
        for run_id in executing_runs()[:5]:
            st.page_link(PAGES["certify"], label=f"run #{run_id} is certifying",
                         icon=":material/hourglass_top:", query_params={"run": str(run_id)})


def entered_page() -> bool:
    """True on the first run of a page after another page (or none: a new session) ran; False on
    the page's own reruns. Pages apply their link's values only then."""
    return st.session_state.get("_page_before") != st.session_state.get("_page_now")


def executing_runs() -> list[int]:
    """Runs of this store that a dashboard job is executing: the job's process is alive and the
    store still says the run is pending or running (a process that has recorded its end but not
    yet exited does not count), newest first."""
    out = []
    for job in job_manager().jobs("certify"):
        if job.status == "running" and job.run_id is not None and job.db == str(db_path()) \
                and _run_active(job.run_id):
            out.append(int(job.run_id))
    return out


def _run_active(run_id: int) -> bool:
    try:
        return get_store().run(run_id)["status"] in ACTIVE
    except SmoothvizError:
        return False


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def absolute(text: str) -> str:
    """A path typed into a page as an absolute path (relative ones are taken from the repository)."""
    path = Path(text.strip()).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


def db_path() -> Path:
    """The results database: ``$SMOOTHVIZ_DB`` or ``runs/smoothviz.db`` in the repository."""
    env = os.environ.get("SMOOTHVIZ_DB")
    return Path(env) if env else ROOT / "runs" / "smoothviz.db"


@st.cache_resource
def _store(path: str):
    from smoothviz.store import Store

    return Store(path)


def get_store():
    """The ``Store`` on the current database, shared by all sessions (it is thread-safe)."""
    return _store(str(db_path()))


@st.cache_data(max_entries=256, show_spinner=False)
def run_and_results(db: str, run_id: int, stamp: tuple) -> tuple[dict, pd.DataFrame]:
    """A run's record and per-point results, cached per database until the run changes (``stamp``)."""
    store = get_store()
    return store.run(run_id), store.results(run_id)


@st.cache_resource
def _job_manager(jobs_dir: str):
    from smoothviz.jobs import JobManager

    return JobManager(jobs_dir)


def job_manager():
    """The process-wide job manager; its files live in ``jobs/`` next to the database."""
    return _job_manager(str(db_path().parent / "jobs"))


@st.cache_resource(max_entries=3, show_spinner="Loading dataset…")
def load_dataset(name: str):
    """The dataset ``name`` (cached for all sessions; raises ``DatasetUnavailable`` if missing)."""
    from smoothviz import data

    return data.load_dataset(name)


@st.cache_data(max_entries=8, show_spinner=False)
def class_names(dataset: str) -> list[str] | None:
    """The class names of ``dataset`` for labels and per-class tables, or None when it cannot be loaded."""
    try:
        return list(load_dataset(dataset).class_names)
    except SmoothvizError:
        return None


@st.cache_resource(max_entries=8, show_spinner="Preparing σ(x)…")
def load_sigma(dataset: str, spec: str, reference: str | None = None):
    """The sigma function ``spec`` on ``dataset``'s training set, or for a kNN σ on the reference
    points ``reference`` (``imagefolder:PATH``/``npz:FILE``), built once for all pages."""
    from smoothviz.knn_reference import build_run_sigma

    return build_run_sigma(spec, load_dataset(dataset), reference)


@st.cache_resource(max_entries=4, show_spinner="Reading the reference points…")
def load_reference(text: str, dataset: str):
    """The kNN reference points ``text`` decoded like ``dataset`` (``data_sources.ReferenceSet``)."""
    from smoothviz.data_sources import load_reference as read

    return read(text, like=load_dataset(dataset))


# ---------------------------------------------------------------- models other than smoothviz checkpoints
def uploads_dir() -> Path:
    """Where uploaded model files are kept: ``uploads/`` next to the results store."""
    return db_path().parent / "uploads"


def save_upload(name: str, content: bytes) -> Path:
    """An uploaded model file, kept under ``uploads_dir()`` and named after its SHA-256 (a run
    that records the path finds the same bytes; uploading them again writes nothing)."""
    import hashlib
    import re

    from smoothviz.outputs import write_output

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[-80:] or "model"
    path = uploads_dir() / f"{hashlib.sha256(content).hexdigest()[:16]}-{safe}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_output(path, lambda fh: fh.write(content), mode="wb", what="upload")
    return path


def _stamp(*paths: str | None) -> tuple:
    """(path, modification time) of each file, so a cached model is rebuilt when a file changes."""
    out = []
    for text in paths:
        if text and not text.startswith("torchvision:"):
            p = Path(text)
            out.append((text, p.stat().st_mtime if p.exists() else 0.0))
    return tuple(out)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _foreign_model(model: str, weights: str | None, trained_sigma: float | None, stamp: tuple, device: str):
    from smoothviz.model_sources import ModelRequest, open_model

    return open_model(ModelRequest(model=model, weights=weights, trained_sigma=trained_sigma), device)


def foreign_model(model: str, weights: str | None = None, trained_sigma: float | None = None, device: str = "cpu"):
    """A reference-code, MACER or torchvision model (``model_sources.LoadedModel``), loaded weights-only
    and cached. The dashboard runs no code: a TorchScript or torch.export archive is refused here
    (loading one can execute code it contains), with the command line named for it."""
    from smoothviz.errors import CheckpointError
    from smoothviz.model_sources import archive_kind

    path = Path(model)
    if path.is_file() and archive_kind(path) is not None:
        raise CheckpointError(f"{display_path(path)} is a {archive_kind(path)} archive: loading one can run code it "
                              "contains, which the dashboard never does; certify it with the command line "
                              "(python -m smoothviz certify --model FILE --trust-archive)")
    return _foreign_model(model, weights, trained_sigma, _stamp(model, weights), device)


@st.cache_resource(max_entries=16, show_spinner=False)
def _foreign_batch_size(model: str, weights: str | None, stamp: tuple, device: str) -> int:
    from smoothviz import speed
    from smoothviz.device import resolve_device

    loaded = _foreign_model(model, weights, None, stamp, "cpu")
    return speed.default_batch_size(resolve_device(device), loaded.module, tuple(loaded.info.input_shape))


def foreign_batch_size(model: str, weights: str | None, device: str) -> int:
    """The engine's default batch size for a foreign model on ``device`` (measured once, cached)."""
    return _foreign_batch_size(model, weights, _stamp(model, weights), device)


@st.cache_data(max_entries=32, ttl=600, show_spinner="Measuring the sampling rate…")
def _foreign_rate(model: str, weights: str | None, stamp: tuple, device: str, batch_size: int, rates: str):
    from smoothviz import cost
    from smoothviz.certify import engine_classifier
    from smoothviz.device import resolve_device

    dev = resolve_device(device)
    module, info = _foreign_model(model, weights, None, stamp, str(dev))
    engine = engine_classifier(module, {}, dev, batch_size, tuple(info.input_shape))
    return cost.engine_rate(info.sha256 or "", engine, info.input_shape, info.num_classes, dev, {}, rates)[1]


def foreign_rate(model: str, weights: str | None, device: str, batch_size: int):
    """Noisy samples per second of a foreign model (recorded for its SHA-256, else measured; cached)."""
    from smoothviz import cost

    return _foreign_rate(model, weights, _stamp(model, weights), device, batch_size, str(cost.rates_file(db_path())))


@st.cache_data(max_entries=16, show_spinner="Checking the model against the data…")
def model_misfit(model: str, weights: str | None, mtime: float, dataset: str) -> str | None:
    """Why a model file does not fit the data (shape, classes, value range, a probe batch), or None; ``mtime``
    keys the cache to the file's version."""
    from smoothviz.model_sources import check_fits

    loaded = foreign_model(model, weights)
    try:
        check_fits(loaded.module, loaded.info, load_dataset(dataset), loaded.info.source)
    except SmoothvizError as exc:
        return one_line(str(exc))
    return None


@st.cache_resource(max_entries=4, show_spinner="Loading checkpoint…")
def _load_model(path: str, mtime: float, device: str, dataset: str | None):
    from smoothviz import models

    return models.load_checkpoint(path, device=device, expected_dataset=dataset)


def load_model(path: str | Path, device: str = "cpu", dataset: str | None = None):
    """``(model, meta)`` of a checkpoint, cached by path and modification time."""
    p = Path(path)
    return _load_model(str(p), p.stat().st_mtime if p.exists() else 0.0, device, dataset)


@st.cache_resource(max_entries=16, show_spinner=False)
def _engine_batch_size(path: str, mtime: float, device: str) -> int:
    from smoothviz import speed
    from smoothviz.device import resolve_device

    model, meta = _load_model(path, mtime, "cpu", None)
    return speed.default_batch_size(resolve_device(device), model, tuple(meta["input_shape"]))


def engine_batch_size(path: str | Path, device: str) -> int:
    """The engine's default batch size for a checkpoint on ``device`` (measured once, cached)."""
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    return _engine_batch_size(str(p), p.stat().st_mtime if p.exists() else 0.0, device)


def checkpoint_dirs() -> tuple[Path, ...]:
    """Where checkpoints are looked for: ``$SMOOTHVIZ_CHECKPOINTS`` (os.pathsep-separated dirs), else
    assets/ and the training folder next to the database (runs/checkpoints/ by default)."""
    env = os.environ.get("SMOOTHVIZ_CHECKPOINTS")
    if env:
        return tuple(Path(p) for p in env.split(os.pathsep) if p)
    return (ROOT / "assets", train_checkpoint_dir())


def train_checkpoint_dir() -> Path:
    """Where the dashboard writes newly trained checkpoints (runs/checkpoints/ next to the database)."""
    return db_path().parent / "checkpoints"


@st.cache_data(ttl=10, show_spinner=False)
def _scan_checkpoints(dirs: tuple[str, ...], dataset: str | None) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    from smoothviz import models

    found, failed = models.scan_checkpoints(dirs=dirs, dataset=dataset)
    return [(str(path), dict(meta)) for path, meta in found], [(str(path), reason) for path, reason in failed]


def list_checkpoints(dataset: str | None = None) -> list[tuple[str, dict]]:
    """Usable checkpoints in ``checkpoint_dirs()`` (optionally of one dataset), with their meta (cached 10 s)."""
    return _scan_checkpoints(tuple(str(d) for d in checkpoint_dirs()), dataset)[0]


def unusable_checkpoints() -> list[tuple[str, str]]:
    """``*.pt`` files in ``checkpoint_dirs()`` that cannot be used, each with its one-line reason."""
    return _scan_checkpoints(tuple(str(d) for d in checkpoint_dirs()), None)[1]


def checkpoint_label(path: str, meta: dict | None = None) -> str:
    """Short label for a checkpoint: file name with arch and sigma from its meta."""
    name = Path(path).name
    if not meta:
        return name
    bits = [str(meta.get(k)) for k in ("arch", "sigma") if meta.get(k)]
    return f"{name} ({', '.join(bits)})" if bits else name


def relative_paths(text: str) -> str:
    """``text`` with the repository's absolute path removed, so messages show ``assets/x.pt``."""
    return text.replace(f"{ROOT}{os.sep}", "").replace(str(ROOT), ".")


def one_line(text: str, limit: int = 400) -> str:
    """The first line of a message, shortened to ``limit`` characters and with repository-relative paths."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = relative_paths(lines[0] if lines else "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def shown(value: object, limit: int = 40) -> str:
    """A value as it appears in a message: quoted, printable, shortened."""
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 2] + "…'"


def show_error(exc: BaseException) -> None:
    """A user error as a red box with its one-line message (no traceback, repository-relative paths)."""
    if isinstance(exc, SmoothvizError):
        st.error(one_line(str(exc)), icon=ERROR_ICON)
    else:
        st.error(one_line(f"{type(exc).__name__}: {exc}"), icon=ERROR_ICON)


def offer_examples(key: str) -> None:
    """On an empty store: one button that loads the shipped example runs (digits and Fashion-MNIST,
    constant vs kNN σ), so every page has results to show."""
    from smoothviz.examples import load_examples

    if st.button("Load the example runs", key=key, type="primary", icon=":material/download:",
                 help="Finished certifications shipped in assets/examples (computed with the command line "
                      "on the shipped checkpoints); they are marked as examples and can be deleted."):
        try:
            ids = load_examples(get_store())
        except SmoothvizError as exc:
            show_error(exc)
        else:
            st.session_state["_examples_loaded"] = ids
            st.rerun()


@contextmanager
def stop_on_error() -> Iterator[None]:
    """Run the block; a user error in it shows its message and ends the page script (no traceback)."""
    try:
        yield
    except SmoothvizError as exc:
        show_error(exc)
        st.stop()


def query_int(key: str, default: int | None = None) -> int | None:
    """An integer from the URL query string (``default`` when absent or malformed)."""
    value = st.query_params.get(key)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def query_ints(key: str) -> list[int]:
    """Comma-separated integers from the URL query string (malformed items skipped)."""
    out: list[int] = []
    for item in str(st.query_params.get(key, "")).split(","):
        try:
            out.append(int(item))
        except ValueError:
            continue
    return out


def set_query(**values: Any) -> None:
    """Write values into the URL query string (``None`` removes a key); unchanged keys are not rewritten."""
    for key, value in values.items():
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)


def run_label(row: Any) -> str:
    """``#id name`` of a run row (dict or pandas Series)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    name = get("name") or ""
    return f"#{int(get('id'))} {name}".strip()



def short_spec(spec: str | None) -> str:
    """A sigma spec with numbers rounded for labels (``knn:0.25,0.4,20,m=1.4625`` → ``knn σ_b=0.25 r=0.4 k=20``)."""
    from smoothviz.sigma import parse_sigma_spec

    if not spec:
        return "σ unknown"
    try:
        p = parse_sigma_spec(spec)
    except SmoothvizError:
        return spec
    if p["kind"] == "constant":
        return f"σ={p['sigma']:.3g}"
    if p["kind"] == "ddrs":
        return f"ddrs σ∈[{p['sigma_min']:.3g},{p['sigma_max']:.3g}] G={p['num_sigmas']} (naive only)"
    text = f"knn σ_b={p['sigma_b']:.3g} r={p['r']:.3g} k={p['k']}"
    if p.get("sigma_min") is not None or p.get("sigma_max") is not None:
        text += f" clip[{p.get('sigma_min') or 0:.3g},{p.get('sigma_max') or float('inf'):.3g}]"
    return text
