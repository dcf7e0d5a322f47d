"""One run: compose the objects from the config, fit, export the policy, print the table.

The shape follows lightning-hydra-template: instantiate data, module, callbacks,
loggers and trainer from the config, fit, and always finish the W&B run so that
multirun jobs do not merge.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig

from sso_lightning.callbacks import (
    PolicyQuality,
    Regeneration,
    TrainThroughput,
    TwoStageRegeneration,
)
from sso_lightning.data.datamodule import SteeredDataModule
from sso_lightning.data.degrees import DegreeRows
from sso_lightning.data.snapshot import read_snapshot
from sso_lightning.data.steering import require_chat_template
from sso_lightning.errors import ConfigError
from sso_lightning.module import SSOModule
from sso_lightning.summary import epoch_table, format_table

SCHEMES = ("combined", "two_stage")


def build(node: DictConfig, **kwargs):
    """``instantiate``, surfacing our one-line ConfigError instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise ConfigError(" ".join(str(e).split())) from None


def check_fresh(run_dir: Path) -> None:
    """Never overwrite what an earlier run in the same directory generated or trained."""
    for existing in [run_dir / "policy", run_dir / "metrics.csv", *sorted((run_dir / "data").glob("epoch_*.jsonl"))]:
        if existing.exists():
            raise ConfigError(f"{existing} already exists; choose a new hydra.run.dir")


def run(cfg: DictConfig, run_dir: Path) -> Path:
    check_fresh(run_dir)
    if cfg.scheme not in SCHEMES:
        raise ConfigError(f"scheme={cfg.scheme} is not valid (valid: {', '.join(SCHEMES)})")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objective = build(cfg.loss)
    two_stage = cfg.scheme == "two_stage"
    if two_stage and not objective.steers:
        raise ConfigError(
            "scheme=two_stage trains the data generator on L+ + L-, and loss.plus=false loss.minus=off "
            "leaves it nothing to learn; use scheme=combined (PBAA)"
        )
    if two_stage and (cfg.data.offline or not cfg.data.get("regenerate", True)):
        raise ConfigError(
            "scheme=two_stage samples fresh pairs from its generator every iteration; "
            "data.offline and data.regenerate=false need scheme=combined"
        )
    keys = objective.required_sequences("policy" if two_stage else "combined")
    prompts = build(cfg.data.prompts).load()
    principles, judge, sampling = build(cfg.principles), build(cfg.judge), build(cfg.generation)
    policy, tokenizer = build(cfg.model).load()
    require_chat_template(tokenizer)  # fail before the trainer starts
    offline = read_snapshot(Path(cfg.data.offline), tokenizer, keys) if cfg.data.offline else None
    degree_rows = (
        DegreeRows(objective.spo.variants(), objective.spo.responses, tokenizer) if objective.aux == "spo" else None
    )
    datamodule = SteeredDataModule(
        cfg.data.batch_size,
        keys,
        tokenizer.pad_token_id,
        shuffle=cfg.data.get("shuffle", True),
        seed=cfg.seed,
        degree_rows=degree_rows,
    )
    module = SSOModule(
        policy, tokenizer, objective, build(cfg.optimizer), compile=cfg.model.get("compile", False), scheme=cfg.scheme
    )
    if two_stage:
        regeneration = TwoStageRegeneration(
            prompts.train, principles, judge, sampling, objective, run_dir / "data", cfg.data.reference
        )
    else:
        regeneration = Regeneration(
            prompts.train,
            principles,
            judge,
            sampling,
            keys,
            run_dir / "data",
            cfg.data.reference,
            offline,
            regenerate=cfg.data.get("regenerate", True),
        )
    callbacks = [
        regeneration,
        PolicyQuality(prompts.eval, judge, sampling),
        TrainThroughput(),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar())  # the same bar style as the generation bars
    # check_fresh guarantees no earlier metrics.csv, so the CSV logger's "will be deleted" warning is moot
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    loggers = [CSVLogger(run_dir, name="", version=""), *(build(node) for node in cfg.logger.values())]
    # one epoch per iteration, two under two_stage (generator, then policy)
    trainer = build(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        max_epochs=cfg.trainer.max_epochs * module.phases_per_iteration,
    )
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        if any(isinstance(lg, WandbLogger) for lg in loggers):
            import wandb

            wandb.finish()
    if not trainer.is_global_zero:
        return run_dir
    export_policy(policy, tokenizer, run_dir / "policy")
    table = epoch_table(run_dir / "metrics.csv")
    table.to_csv(run_dir / "epochs.csv")
    print("\n" + format_table(table))
    print(f"\nrun directory: {run_dir}")
    return run_dir


def export_policy(policy, tokenizer, path: Path) -> None:
    """save_pretrained into a temp dir, then rename: no half-written policy."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, path)
