"""One run: compose the objects from the config, fit, export the policy, print the table.

The shape follows lightning-hydra-template: instantiate data, module, callbacks,
loggers and trainer from the config, fit, and always finish the W&B run so that
multirun jobs do not merge.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig

from sso_lightning.atomic import publish_dir
from sso_lightning.callbacks import Iterations, PolicyQuality, TrainThroughput
from sso_lightning.data.datamodule import SteeredDataModule
from sso_lightning.data.prompts import fit_prompts
from sso_lightning.data.snapshot import read_snapshot
from sso_lightning.data.steering import require_chat_template
from sso_lightning.errors import ConfigError
from sso_lightning.finite import FiniteSteps, require_finite
from sso_lightning.loggers import log_run_config
from sso_lightning.module import SSOModule
from sso_lightning.pipeline import IterationPipeline
from sso_lightning.precision import UnchangedWeights
from sso_lightning.references import make_reference
from sso_lightning.summary import epoch_table, format_table
from sso_lightning.terminal import StderrProgressBar, quiet_lightning
from sso_lightning.validate import check_config


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
    """Never overwrite what an earlier run in the same directory generated or trained, and find a
    directory the run cannot write in now, not after its first generation."""
    for existing in [run_dir / "policy", run_dir / "metrics.csv", *sorted((run_dir / "data").glob("epoch_*.jsonl"))]:
        if existing.exists():
            raise ConfigError(f"{existing} already exists; choose a new hydra.run.dir")
    for directory in (run_dir, run_dir / "data"):
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{directory} is not writable; choose another hydra.run.dir")


def run(cfg: DictConfig, run_dir: Path) -> Path:
    check_config(cfg)
    check_fresh(run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    objective, scheme = build(cfg.loss), build(cfg.scheme)
    regenerate = cfg.data.get("regenerate", True)
    scheme.check(objective, offline=bool(cfg.data.offline), regenerate=regenerate)
    reference = make_reference(cfg.data.reference)
    keys = objective.required_sequences(scheme.phases[0])
    prompts = build(cfg.data.prompts).load()
    if not prompts.eval:
        print("note: data.prompts.num_eval=0: eval/quality is not measured in this run", file=sys.stderr)
    principles, judge, generation = build(cfg.principles), build(cfg.judge), build(cfg.generation)
    sampling, engine = generation.sampling(), generation.engine()
    model = build(cfg.model)
    policy, tokenizer = model.load()
    require_chat_template(tokenizer)  # fail before the trainer starts
    prompts = fit_prompts(prompts, tokenizer, cfg.data.get("max_prompt_length"), cfg.data.get("long_prompts", "refuse"))
    engine.check(policy)
    max_length = cfg.data.get("max_length")  # training and scoring cut rows alike
    offline = read_snapshot(Path(cfg.data.offline), tokenizer, keys) if cfg.data.offline else None
    datamodule = SteeredDataModule(
        cfg.data.batch_size,
        keys,
        tokenizer.pad_token_id,
        shuffle=cfg.data.get("shuffle", True),
        seed=cfg.seed,
        extra_rows=objective.aux.rows(tokenizer) if objective.aux is not None else None,
        max_length=max_length,
    )
    schedule = build(cfg.scheduler) if cfg.scheduler else None
    module = SSOModule(
        policy,
        tokenizer,
        objective,
        build(cfg.optimizer),
        phases=scheme.phases,
        forward=model.training_forward(policy),
        schedule=schedule,
    )
    pipeline = IterationPipeline(
        prompts.train,
        principles,
        judge,
        sampling,
        tokenizer,
        run_dir / "data",
        reference,
        max_length=max_length,
        packing=model.packs(policy),
        engine=engine,
        prompt_metrics=prompts.metrics,
    )
    callbacks = [
        UnchangedWeights(),  # first: its precision warning comes before the first generation
        FiniteSteps(),
        Iterations(scheme, pipeline, offline, regenerate),
        PolicyQuality(prompts.eval, judge, sampling, engine),
        TrainThroughput(),
        *([schedule, LearningRateMonitor(logging_interval="step")] if schedule else []),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StderrProgressBar())  # the same bar style as the generation bars
    # check_fresh guarantees no earlier metrics.csv, so the CSV logger's "will be deleted" warning is moot
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    loggers = [CSVLogger(run_dir, name="", version=""), *(build(node) for node in cfg.logger.values())]
    with quiet_lightning():
        # one epoch per phase: trainer.max_epochs counts iterations
        trainer = build(
            cfg.trainer, callbacks=callbacks, logger=loggers, max_epochs=cfg.trainer.max_epochs * len(scheme.phases)
        )
        try:
            log_run_config(trainer.loggers, cfg)  # after the Trainer: only global rank zero logs
            trainer.fit(module, datamodule=datamodule)
        finally:
            engine.close()
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
    """No half-written policy: saved into a temp directory, then renamed; never a non-finite one."""
    require_finite(policy, "the trained policy")

    def save(directory: Path) -> None:
        policy.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    publish_dir(path, save)
