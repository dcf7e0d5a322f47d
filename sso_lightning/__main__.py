"""``python -m sso_lightning [overrides]``: one SSO run (or a Hydra multirun with -m)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sso_lightning.errors import ConfigError, RunInterrupted, RunStopped
from sso_lightning.loggers import multirun_dir
from sso_lightning.overrides import check_key_overrides
from sso_lightning.resume import resume_argv

FAILED_MARKER = "FAILED"  # a job directory holding this file ended in an error (its one line inside)
failed_jobs: list[str] = []  # this process's failed multirun jobs, reported when the sweep ends


def config_dir() -> str:
    """conf/ as installed (package sso_lightning.conf), or beside the package in a bare clone."""
    spec = importlib.util.find_spec("sso_lightning.conf")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]).resolve())
    return str(Path(__file__).resolve().parent.parent / "conf")


CONFIG_DIR = config_dir()


def check_group_overrides(args: list[str]) -> None:
    """One clear line for ``group=name`` when conf/<group>/<name>.yaml does not exist
    (Hydra's own message spans many lines)."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports malformed overrides itself
        return
    for override in parsed:
        group = Path(CONFIG_DIR) / override.key_or_group
        hydra_group = override.key_or_group.startswith("hydra/")  # plugins add options there
        if override.is_delete() or hydra_group or not group.is_dir() or override.package is not None:
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        valid = sorted(p.stem for p in group.glob("*.yaml"))
        for value in values:
            if isinstance(value, str) and value not in valid:
                raise ConfigError(f"{override.key_or_group}={value}: no such config (valid: {', '.join(valid)})")


def config_groups() -> str:
    """``--help``'s config groups (conf/hydra/help/sso.yaml): Hydra's own list, $APP_CONFIG_GROUPS,
    would also name sweep/wandb, which holds W&B sweep files, not configs."""
    conf = Path(CONFIG_DIR)
    groups = sorted({p.parent.relative_to(conf).as_posix() for p in conf.glob("*/**/*.yaml")})
    return "\n".join(
        f"{group}: {', '.join(sorted(p.stem for p in (conf / group).glob('*.yaml')))}"
        for group in groups
        if not (group.startswith("hydra/") or group == "sweep/wandb")
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    from sso_lightning.train import run

    # Lightning adds its own stderr handler; Hydra's root handlers already print (and file) its records.
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        lightning_logger.removeHandler(handler)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except RunInterrupted as e:  # a signal ends the whole sweep too: its jobs resume one by one
        if multirun_dir() is not None:
            (run_dir / FAILED_MARKER).write_text(f"{e}\n")
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(e.code)
    except Exception as e:
        if multirun_dir() is None:
            if isinstance(e, ConfigError):
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            if isinstance(e, RunStopped):
                print(f"\nerror: {e}", file=sys.stderr)  # on a line of its own, after the progress bars
                sys.exit(1)
            raise
        # one failing job does not end the sweep: mark it for the report and go on
        expected = isinstance(e, ConfigError | RunStopped)  # one line says it all
        line = str(e) if expected else " ".join(f"{type(e).__name__}: {e}".split())
        logging.getLogger(__name__).error("job failed", exc_info=not expected)
        (run_dir / FAILED_MARKER).write_text(line + "\n")
        print(f"error: {run_dir}: {line}", file=sys.stderr)
        failed_jobs.append(str(run_dir))


def main() -> None:
    try:
        resumed = resume_argv(sys.argv[1:])
        if resumed is not None:  # the run's saved config, not a new composition
            sys.argv[1:] = resumed
        else:
            check_group_overrides(sys.argv[1:])
            check_key_overrides(sys.argv[1:], CONFIG_DIR)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)
    hydra_main()
    if failed_jobs:
        print(f"error: {len(failed_jobs)} job(s) of the sweep failed: {', '.join(failed_jobs)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
