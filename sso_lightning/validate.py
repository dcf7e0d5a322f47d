"""The composed config, checked as a whole before anything is loaded or written: options that must
be set, options that do not exist, values of the wrong type (from the constructors' annotations),
and the ranges the run needs. Each failure is one ``ConfigError`` line naming the option."""

from __future__ import annotations

import inspect
import math
import sys
import types
import typing
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from sso_lightning.__main__ import CONFIG_DIR
from sso_lightning.data.prompts import check_prompt_limit
from sso_lightning.errors import ConfigError

PLAIN_TYPES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
TOP_LEVEL = ("seed", "variant", "resume", "checkpoint", "optimizer")  # config.yaml's own keys; the rest are its groups


def check_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set (it has no default): add {missing[0]}=<value>")
    options = {*TOP_LEVEL, *(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra")}
    unknown = sorted(set(cfg) - options)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not an option of this program (options: {', '.join(sorted(options))})")
    check_types(cfg, "")
    need(cfg.seed, int, "seed", "an integer")
    need(cfg.trainer.max_epochs, int, "trainer.max_epochs", "an integer >= 1 (one epoch = one SSO iteration)", low=1)
    need(cfg.data.batch_size, int, "data.batch_size", "an integer >= 1", low=1)
    check_prompt_limit(cfg.data.get("max_prompt_length"), cfg.data.get("long_prompts", "refuse"))
    lr = cfg.optimizer.lr
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"optimizer.lr={lr} must be a finite number > 0")


def need(value, kind: type, option: str, valid: str, low: int | None = None) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or (low is not None and value < low):
        raise ConfigError(f"{option}={value} is not valid: it must be {valid}")


def check_types(node: DictConfig, path: str) -> None:
    """Every value of a node with a ``_target_`` whose parameter is annotated as a plain type
    (float, int, bool, str, or one of them or None) must be of that type; nested nodes too."""
    hints = annotations(node.get("_target_")) if "_target_" in node else {}
    for key in node:
        if str(key).startswith("_"):
            continue
        value, option = node[key], f"{path}{key}"
        if isinstance(value, DictConfig):
            check_types(value, f"{option}.")
        elif key in hints and not fits(value, hints[key]):
            kinds = " or ".join(PLAIN_TYPES[t] for t in plain(hints[key]))
            raise ConfigError(f"{option}={value} is not valid: it must be {kinds}")


def annotations(target) -> dict[str, object]:
    """The parameter annotations of what the target names, each resolved on its own (one that
    names a type imported only for type checkers is left out)."""
    try:
        made_by = get_object(target)  # a class or a factory function
        parameters = inspect.signature(made_by).parameters.values()
    except Exception:  # a target that cannot be found or inspected: instantiate will say so
        return {}
    scope = vars(sys.modules[made_by.__module__])
    hints = {}
    for parameter in parameters:
        hint = parameter.annotation
        try:
            hints[parameter.name] = eval(hint, scope) if isinstance(hint, str) else hint
        except Exception:
            continue
    return hints


def plain(hint) -> list[type]:
    """The plain types a hint admits (None aside), or [] when it admits anything else."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    return kinds if kinds and all(k in PLAIN_TYPES for k in kinds) else []


def fits(value, hint) -> bool:
    kinds = plain(hint)
    if not kinds or value is None:
        return True
    if isinstance(value, bool):
        return bool in kinds
    return any(isinstance(value, int | float) if k is float else isinstance(value, k) for k in kinds)
