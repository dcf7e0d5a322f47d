"""``python -m sso_lightning resume=<run dir>``: the command line that continues a run.

The run goes on with its own saved config (``<run dir>/.hydra/config.yaml``, what Hydra
composed when it started), in its own directory, without Hydra writing anything there again:
the command line becomes ``--config-path <run dir>/.hydra --config-name config`` with
``hydra.run.dir=<run dir> hydra.output_subdir=null ++resume=<run dir>`` (the form Lightning's DDP
launcher also gives the other processes). An override may repeat a saved value but not change it.
Where the run stands is the trainer's business (``train.resume_point``).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sso_lightning.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
# what a user types; ``++resume=`` is this module's own rewrite, which Lightning's DDP launcher
# gives the other processes as it is
ASKED = ("resume=", "+resume=")


def resume_argv(args: list[str]) -> list[str] | None:
    """The arguments that continue the run named by ``resume=<dir>`` in ``args``; None without one."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(ASKED)]
    if not values:
        return None
    if any(a in MULTIRUN_FLAGS for a in args):
        raise ConfigError("resume=<run dir> continues one run; for a sweep, resume each job's directory on its own")
    run_dir = Path(values[-1]).expanduser().resolve()
    saved = run_dir / ".hydra" / "config.yaml"
    if run_dir.is_file():  # a checkpoint: its run holds the rest of what resuming needs
        raise ConfigError(f"resume={values[-1]} is a file; name the run's directory (resume={run_dir.parent.parent})")
    if not saved.is_file():
        raise ConfigError(f"resume={values[-1]}: {saved} does not exist; name the directory of a run of this program")
    config = OmegaConf.load(saved)
    others = [a for a in args if not a.startswith(ASKED)]
    check_same(others, config, saved)
    return [
        f"--config-path={saved.parent}",
        "--config-name=config",
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
        f"++resume={run_dir}",
    ]


def check_same(overrides: list[str], config, saved: Path) -> None:
    """Each override must repeat the saved value: a resumed run is the run that was started."""
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            raise ConfigError(f"resume=<run dir> takes no other option than key=value overrides (got {arg})")
        (override,) = OverridesParser.create().parse_overrides([arg])
        key = override.key_or_group.lstrip("+~")
        current = OmegaConf.select(config, key, default=None)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if override.is_delete() or current != override.value():
            raise ConfigError(
                f"resume continues with the run's saved config ({saved}), where {key}={current}; "
                f"{arg} would change it (drop the override, or start a new run)"
            )
