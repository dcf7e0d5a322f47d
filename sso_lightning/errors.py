"""User-facing errors: one line that names the option/file and what is valid."""


class ConfigError(Exception):
    """Bad configuration or input; printed as one line, exit code 2."""
