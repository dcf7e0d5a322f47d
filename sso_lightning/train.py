"""One run: compose the objects from the config, fit, export the policy, print the table.

The shape follows lightning-hydra-template: instantiate data, module, callbacks,
loggers and trainer from the config, fit, and always finish the W&B run so that
multirun jobs do not merge.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import warnings
from pathlib import Path
from signal import SIGTERM

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from sso_lightning.__main__ import FAILED_MARKER
from sso_lightning.atomic import publish_dir
from sso_lightning.callbacks import Iterations, PolicyQuality, TrainThroughput
from sso_lightning.checkpoints import CHECKPOINT_DIR, AtomicCheckpointIO, Checkpoints, ResumePoint
from sso_lightning.data.datamodule import SteeredDataModule
from sso_lightning.data.prompts import fit_prompts
from sso_lightning.data.snapshot import read_snapshot
from sso_lightning.data.steering import require_chat_template
from sso_lightning.errors import ConfigError, RunInterrupted
from sso_lightning.finite import FiniteSteps, require_finite
from sso_lightning.loggers import log_run_config
from sso_lightning.module import SSOModule
from sso_lightning.pipeline import IterationPipeline
from sso_lightning.precision import UnchangedWeights
from sso_lightning.preemption import Preemption
from sso_lightning.references import make_reference
from sso_lightning.rundir import requeued, run_outputs
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
    """Never overwrite what an earlier run in the same directory generated or trained."""
    for existing in run_outputs(run_dir):
        if existing.exists():
            raise ConfigError(f"{existing} already exists; choose a new hydra.run.dir (or resume={run_dir})")


def check_writable(run_dir: Path) -> None:
    """Find a directory the run cannot write in now, not after its first generation."""
    for directory in (run_dir, run_dir / "data", run_dir / CHECKPOINT_DIR):
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{directory} is not writable; choose another hydra.run.dir")


def resume_point(run_dir: Path, checkpoints: Checkpoints) -> ResumePoint | None:
    """The checkpoint a resumed run starts from; what was written after it (snapshots) is made
    again, identically, so it goes. None: no checkpoint yet, the run starts over."""
    if (run_dir / "policy").exists():
        raise ConfigError(f"{run_dir} has finished (its policy/ is exported); there is nothing to resume")
    point = ResumePoint.latest(checkpoints)
    kept = set(point.snapshots) if point else set()
    stale = [p for p in sorted((run_dir / "data").glob("*.jsonl")) if p.name not in kept]
    where = f"from {point.path.relative_to(run_dir)}" if point else "from the start (no checkpoint yet)"
    remade = f"; generated again: {', '.join(p.name for p in stale)}" if stale else ""
    if rank_zero_only.rank == 0:  # under DDP or SLURM every process resumes; one tidies up
        print(f"note: resuming {run_dir} {where}{remade}", file=sys.stderr)
        for path in stale:
            path.unlink()
        (run_dir / "metrics.csv").unlink(missing_ok=True)  # the checkpoint holds the rows up to it
        (run_dir / FAILED_MARKER).unlink(missing_ok=True)  # a sweep job that failed goes on
    return point


def continue_metrics(logger: CSVLogger, text: str | None) -> None:
    """The rows the checkpoint holds, logged again as they were (text and steps), so the file
    goes on without a gap or a duplicate."""
    for row in csv.DictReader(io.StringIO(text or "")):
        logger.log_metrics({k: v for k, v in row.items() if k != "step" and v != ""}, step=int(row["step"]))


def run(cfg: DictConfig, run_dir: Path) -> Path:
    check_config(cfg)
    checkpoints = build(cfg.checkpoint, path=run_dir / CHECKPOINT_DIR)
    resuming = bool(cfg.get("resume")) or requeued()
    if not resuming:
        check_fresh(run_dir)
    check_writable(run_dir)
    point = resume_point(run_dir, checkpoints) if resuming else None
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
    pipeline.start(policy)  # the initial policy, as loaded (a resumed run's checkpoint weights come later)
    step_checkpoints, phase_checkpoints, run_state = checkpoints.callbacks(run_dir)
    preemption = Preemption()
    callbacks = [
        step_checkpoints,  # first: a step's checkpoint comes before anything of that step is logged
        UnchangedWeights(),  # its precision warning comes before the first generation
        FiniteSteps(checkpoints),
        Iterations(scheme, pipeline, offline, regenerate),
        PolicyQuality(prompts.eval, judge, sampling, engine),
        TrainThroughput(),
        *([schedule, LearningRateMonitor(logging_interval="step")] if schedule else []),
        run_state,
        preemption,
        phase_checkpoints,  # after the callbacks that make the next phase's data and log the epoch's metrics
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StderrProgressBar())  # the same bar style as the generation bars
    # no earlier metrics.csv (check_fresh, or resume_point moved its rows into the checkpoint's),
    # so the CSV logger's "will be deleted" warning is moot
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    csv_logger = CSVLogger(run_dir, name="", version="")
    wandb_resume = {"id": point.wandb_id, "resume": "allow"} if point and point.wandb_id else {}
    loggers = [csv_logger, *(build(node, **wandb_resume) for node in cfg.logger.values())]
    with preemption.catching(), quiet_lightning():
        # one epoch per phase: trainer.max_epochs counts iterations
        trainer = build(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers,
            max_epochs=cfg.trainer.max_epochs * len(scheme.phases),
            plugins=[AtomicCheckpointIO()],
        )
        try:
            if point is None:
                log_run_config(trainer.loggers, cfg)  # after the Trainer: only global rank zero logs
            elif trainer.is_global_zero:
                continue_metrics(csv_logger, point.metrics_csv)
            trainer.fit(module, datamodule=datamodule, ckpt_path=point and point.path, weights_only=False)
        except SIGTERMException:
            raise interrupted(trainer, preemption, checkpoints, run_dir) from None
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


def interrupted(trainer: L.Trainer, preemption: Preemption, checkpoints: Checkpoints, run_dir: Path) -> RunInterrupted:
    """The closing line of a run a signal stopped: where, what was saved, how to go on."""
    received = preemption.received or SIGTERM
    latest = checkpoints.latest()
    saved = f"checkpoint {latest.relative_to(run_dir)}" if latest else "no checkpoint yet (resume starts over)"
    return RunInterrupted(
        f"stopped by {received.name} after optimizer step {trainer.global_step}: {saved}; "
        f"continue with: python -m sso_lightning resume={run_dir}{preemption.requeue(trainer)}",
        128 + received,
    )


def export_policy(policy, tokenizer, path: Path) -> None:
    """No half-written policy: saved into a temp directory, then renamed; never a non-finite one."""
    require_finite(policy, "the trained policy")

    def save(directory: Path) -> None:
        policy.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    publish_dir(path, save)
