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
