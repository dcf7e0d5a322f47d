"""Keys on the command line that are not options, found before Hydra starts.

Hydra reports ``loss.gama=0.1`` in five lines, and under ``-m`` only once the sweep has written
its directory. ``check_key_overrides`` composes the config the way Hydra will (every job of a
multirun sweep, each group choice once) and turns a key that is not an option into one line
naming it and its closest option (``loss.gama is not an option of loss (did you mean
loss.gamma?)``), or the options there are. Everything else Hydra reports itself, as before.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from sso_lightning.errors import ConfigError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Hydra's own options that compose from elsewhere (--config-dir adds a search path, --experimental-rerun
# reads a pickled config) or print what they find: Hydra handles those command lines alone.
HANDS_OFF = ("info", "shell_completion", "experimental_rerun", "config_dir", "config_path")


def unknown_key(error: ConfigCompositionException) -> ConfigError | None:
    """The one line for an override of a key that is not in the config, or None for other errors."""
    cause = error.__cause__
    if not isinstance(cause, ConfigAttributeError | ConfigKeyError) or not isinstance(cause.parent_node, DictConfig):
        return None
    key = str(cause.full_key or "")
    parent, _, name = key.rpartition(".")
    if not name:
        return None
    options = sorted(str(k) for k in cause.parent_node if not str(k).startswith("_") and (parent or k != "hydra"))
    where = f"of {parent}" if parent else "of this program"
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return ConfigError(f"{key} is not an option {where} (did you mean {parent + '.' if parent else ''}{close[0]}?)")
    listed = f"options: {', '.join(options)}" if options else f"{parent} has no options"
    add = f"; +{key}=<value> adds it to {parent}" if parent else ""
    return ConfigError(f"{key} is not an option {where} ({listed}{add})")


def compose_or_raise(config_dir: str, config_name: str, overrides: list[str]) -> DictConfig | None:
    """The composed config (with its hydra node); a ConfigError for an unknown key, None for any
    other composition error (Hydra reports those when it composes)."""
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except ConfigCompositionException as e:
        found = unknown_key(e)
        if found is not None:
            raise found from None
        return None


def is_group(override, config_dir: str) -> bool:
    key = override.key_or_group
    return override.package is not None or key.startswith("hydra/") or (Path(config_dir) / key).is_dir()


def sweep_jobs(parsed: list, config_dir: str) -> list[list[str]]:
    """The overrides of every job a basic sweep runs, as Hydra's BasicSweeper splits them, except that
    a swept value (not a group choice) keeps its first value only: which keys exist depends on the
    group choices alone."""
    final: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            final[key] = [f"{key}={override.get_value_element_as_str()}"]
            continue
        if not override.is_discrete_sweep():
            raise ValueError("not a discrete sweep")  # interval(...): another sweeper's; it checks it
        values = [f"{key}={value}" for value in override.sweep_string_iterator()]
        final[key] = values if is_group(override, config_dir) else values[:1]
    return [list(job) for job in itertools.product(*final.values())]


def check_key_overrides(args: list[str], config_dir: str, config_name: str = "config") -> None:
    """Raise a one-line ConfigError when an override of the command line ``args`` (of a run, or of any
    job of a ``-m`` sweep, also one a sweep config's ``hydra.sweeper.params`` adds) sets a key that is
    not an option. Command lines Hydra handles differently are left to it."""
    from hydra._internal.utils import get_args_parser

    if "--version" in args:
        return
    parser = get_args_parser()

    def refuse(message: str):
        raise ValueError(message)

    parser.error = refuse  # a malformed command line: Hydra's own parser says so when it runs
    try:
        options = parser.parse_args(args)
    except ValueError:
        return
    if any(getattr(options, name, None) for name in HANDS_OFF):
        return
    name = options.config_name or config_name
    overrides = list(options.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a malformed override: Hydra says what is wrong with it
        return
    multirun = options.multirun or "hydra.mode=MULTIRUN" in overrides
    swept = any(o.is_sweep_override() for o in parsed)
    if swept and not multirun:
        return  # Hydra says to add --multirun
    try:
        jobs = sweep_jobs(parsed, config_dir) if swept else [overrides]
    except Exception:
        return
    first = compose_or_raise(config_dir, name, jobs[0])
    if not multirun or first is None:
        return
    sweeper = first.hydra.get("sweeper") or {}
    params = (sweeper.get("params") or {}) if sweeper.get("_target_") == BASIC_SWEEPER else {}
    if params:  # a sweep config's own parameters come first; the command line's win
        try:
            extra = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
            jobs = sweep_jobs([*extra, *parsed], config_dir)
        except Exception:
            return
    for job in jobs[1:] if not params else jobs:
        compose_or_raise(config_dir, name, job)
