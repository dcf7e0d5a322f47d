"""User-facing errors: one line that names the option/file and what is valid."""


class ConfigError(Exception):
    """Bad configuration or input; printed as one line, exit code 2."""


class RunStopped(Exception):
    """A run that started and had to stop (a non-finite loss, say); printed as one line, exit code 1."""
