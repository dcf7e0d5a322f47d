"""User-facing errors: one line that names the option/file and what is valid."""


class ConfigError(Exception):
    """Bad configuration or input; printed as one line, exit code 2."""


class RunStopped(Exception):
    """A run that started and had to stop (a non-finite loss, say); printed as one line, exit code 1."""


class RunInterrupted(Exception):
    """A run stopped by a signal, with a checkpoint to resume from; printed as one line, exit code
    128 + the signal's number (as a shell reports a process killed by it)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
