"""Our side of every row, through the project's own code as a run uses it: the model settings from
the config (``model.*``), ``SSOModule`` stepping in a Lightning Trainer built from ``trainer.*``,
``score_sequences`` and ``generate``."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import lightning as L

from sso_lightning.bench.workload import Workload
from sso_lightning.data.datamodule import SteeredDataModule
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.losses import SSOObjective
from sso_lightning.module import SSOModule
from sso_lightning.scoring import score_sequences
from sso_lightning.terminal import quiet_lightning
from sso_lightning.train import build


def fit_steps(work: Workload, objective: SSOObjective, precision: str, callbacks: list[L.Callback], batches: int):
    """``batches`` training steps of ``objective`` on the first batches, in order, with a fresh
    policy and optimizer; ``callbacks`` see every step."""
    model = work.model()
    policy, tokenizer = model.load()
    keys = objective.required_sequences()
    module = SSOModule(policy, tokenizer, objective, build(work.cfg.optimizer), forward=model.training_forward(policy))
    data = SteeredDataModule(work.settings.batch_size, keys, tokenizer.pad_token_id, shuffle=False)
    data.set_examples([example for batch in work.batches(batches) for example in batch], keys)
    with quiet_lightning(), tempfile.TemporaryDirectory() as root:
        trainer = build(
            work.cfg.trainer,
            callbacks=callbacks,
            logger=False,
            precision=precision,
            max_epochs=1,
            max_steps=batches,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(module, datamodule=data)


def loaded(work: Workload):
    """(policy on the device, its model settings), loaded as a run loads them."""
    model = work.model()
    policy, _ = model.load()
    return policy.to(work.device), model


def score(policy, model, batch: Sequence[SteeredExample], keys: tuple[str, ...], pad_id: int) -> None:
    """One batch's rows scored as the iteration pipeline scores them (its packing setting included)."""
    score_sequences(policy, batch, keys, pad_id, len(batch), packing=model.packs(policy))
