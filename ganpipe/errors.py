"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class GanpipeError(Exception):
    """Base class: something the user can fix (bad params, bad data, missing inputs)."""


class ConfigError(GanpipeError):
    """A parameter is unknown, of the wrong type or impossible."""


class DataError(GanpipeError):
    """Input data is missing, corrupt or inconsistent."""


class TrainingError(GanpipeError):
    """Training diverged or cannot continue."""


class DiskFullError(GanpipeError):
    """The disk (or the user's quota) filled up while writing an output. `path` is the file being
    written; the atomic writers (ganpipe.io) kept the previous output and removed the partial one."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
