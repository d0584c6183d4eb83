"""Exceptions with one-line messages meant for users (CLI and dashboard print them as they are)."""


class SmoothvizError(Exception):
    """Base class: a problem the user can fix, reported in one line without a traceback."""


class InvalidArgument(SmoothvizError, ValueError):
    """A numeric or textual argument is outside its valid range (names the argument)."""


class SigmaSpecError(InvalidArgument):
    """A sigma-function specification such as ``knn:0.25,0.01,20`` cannot be parsed."""


class DatasetUnavailable(SmoothvizError):
    """A dataset's files are missing and cannot be downloaded (says where to put them)."""


class CheckpointError(SmoothvizError):
    """A checkpoint is missing, corrupt, foreign or made for another dataset."""


class StoreError(SmoothvizError):
    """The results database is unreadable or a run is not found."""


class LogFormatError(SmoothvizError):
    """A certification log to import is not in the expected tab-separated format."""


class Cancelled(SmoothvizError):
    """A long operation was cancelled through its cancel flag."""


class RunNameTaken(InvalidArgument):
    """A run name chosen for an import or a rename is already used by another run (``run_id``)."""

    def __init__(self, message: str, name: str, run_id: int) -> None:
        super().__init__(message)
        self.name = name
        self.run_id = run_id


class DuplicateImport(StoreError):
    """A log with the same bytes (SHA-256) was imported before, as run ``run_id``."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunBusy(StoreError):
    """A run is being executed by a live process, so it cannot be deleted now."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
