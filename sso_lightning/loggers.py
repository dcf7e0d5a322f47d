"""What a run records: W&B through Lightning's WandbLogger (offline whenever no API key is
configured or the server does not answer), and the run's config and name for every logger."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger, WandbLogger
    from omegaconf import DictConfig


def wandb_has_key() -> bool:
    """Whether wandb finds credentials for its server (WANDB_API_KEY, netrc, its settings files), asked
    as ``wandb.Api()`` asks but without a prompt, the network or starting its service: its default
    server is no longer api.wandb.ai, so we do not look for the key ourselves."""
    import wandb
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:
        auth = wbauth.authenticate_session(
            host=wandb_setup.singleton().settings.base_url, source="sso_lightning", prompt=False, update_session=False
        )
    except wandb.errors.AuthenticationError:
        return True  # a malformed key: wandb.init says what is wrong with it, and the run logs offline
    return auth is not None


def wandb_online() -> bool:
    return os.environ.get("WANDB_MODE") == "online" or (
        os.environ.get("WANDB_MODE") not in ("offline", "disabled") and wandb_has_key()
    )


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a Hydra multirun: its directory's last two parts (``<date>/<time>``
    by default), so every job of one sweep, and its report, share it."""
    return "/".join(Path(sweep_dir).resolve().parts[-2:])


def multirun_dir() -> Path | None:
    """The sweep directory when this process runs a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def job_overrides() -> list[str]:
    """The overrides this Hydra job runs with; none when the config was composed without Hydra's runtime."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(variant: str | None, overrides: list[str]) -> str:
    """``<variant or "default"> <overrides>``, e.g. ``SSO seed=1``: the variant names itself, so
    its own override is left out."""
    return " ".join([variant or "default", *(o for o in overrides if o.split("=", 1)[0] != "variant")])


def flat_config(node: DictConfig, prefix: str = "") -> dict[str, Any]:
    """``node`` as dotted keys (``loss.gamma``), interpolations resolved; a value that cannot be
    (``${hydra:...}`` outside a Hydra job, a ``???`` never given) stays as written."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    flat: dict[str, Any] = {}
    for key in node:
        try:
            value = node[key]
        except (InterpolationResolutionError, MissingMandatoryValue):
            value = OmegaConf.to_container(node, resolve=False)[key]
        if isinstance(value, DictConfig):
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, ListConfig):
            flat[f"{prefix}{key}"] = OmegaConf.to_container(value, resolve=True)
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """Every logger's hyperparameters: the composed config as dotted keys, plus what reports group
    runs by besides ``variant`` and ``seed``: the job's ``overrides`` and, under -m, its ``sweep``."""
    config = {**flat_config(cfg), "overrides": job_overrides()}
    if (sweep := multirun_dir()) is not None:
        config["sweep"] = sweep_group(sweep)
    return config


def log_run_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """The run's config to every logger, first thing: for W&B that starts the run, so a server out
    of reach (no answer within its ``init_timeout``) turns it offline, with one warning, before
    training rather than killing the run."""
    import wandb

    config = run_config(cfg)
    for logger in loggers:
        try:
            logger.log_hyperparams(config)
        except wandb.errors.Error as e:
            print(
                f"warning: W&B did not start online ({str(e).splitlines()[0]}); this run logs offline "
                f"(upload it with `wandb sync {Path(logger.save_dir) / 'wandb'}/offline-run-*`; "
                "WANDB_MODE=offline skips the attempt)",
                file=sys.stderr,
            )
            logger._wandb_init["mode"] = "offline"  # the arguments of Lightning's wandb.init
            logger.log_hyperparams(config)


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    group: str | None = None,
    variant: str | None = None,
    init_timeout: float = 15,
    **kwargs,
) -> WandbLogger:
    """``name`` defaults to ``run_name``, ``group`` to the sweep's group under ``-m`` (see
    ``sweep_group``); online with an API key (see ``log_run_config`` for a server out of reach)."""
    # imported here: the report imports this module and needs no Lightning
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if group is None and (sweep := multirun_dir()) is not None:
        group = sweep_group(sweep)
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name or run_name(variant, job_overrides()),
        group=group,
        # wandb.init's mode, not offline=True: Lightning would set WANDB_MODE, which wandb reads once per process
        mode=None if wandb_online() else "offline",
        # silent: no run header, history and summary on the terminal (wandb's warnings and errors still show)
        settings=wandb.Settings(silent=True, init_timeout=init_timeout),
        **kwargs,
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning always passes it; wandb warns that it has no effect
    return logger
