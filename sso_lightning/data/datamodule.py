"""The DataModule serves the current epoch's snapshot; the regeneration callback
replaces it before every epoch (``reload_dataloaders_every_n_epochs=1``). Its loaders can
resume in the middle of an epoch (``resumable.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DistributedSampler, SequentialSampler

from sso_lightning.data.batching import Collator, ExtraRows
from sso_lightning.data.resumable import RecordedShuffle, ResumableLoader
from sso_lightning.data.snapshot import SteeredExample
from sso_lightning.errors import ConfigError


class SteeredDataModule(L.LightningDataModule):
    def __init__(
        self,
        batch_size: int,
        keys: Sequence[str],
        pad_id: int,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        extra_rows: ExtraRows | None = None,
        max_length: int | None = None,
    ):
        super().__init__()
        if max_length is not None and max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2 tokens, or null for no cut (got {max_length})")
        self.batch_size, self.shuffle, self.seed, self.num_workers = batch_size, shuffle, seed, num_workers
        self.collator = Collator(keys, pad_id, extra_rows, max_length)
        self.examples: list[SteeredExample] = []
        self.epoch = 0  # the epoch (phase) the loaders serve, set by the regeneration callback

    def set_examples(self, examples: list[SteeredExample], keys: Sequence[str]) -> None:
        """The next epoch's examples and the sequences it reads (under two_stage they change per phase)."""
        self.examples = examples
        self.collator.keys = tuple(keys)

    def trained(self) -> int:
        """Batches of the running epoch trained so far (what a resumed loader skips)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> ResumableLoader:
        """Under several processes, our own DistributedSampler: Lightning's would always
        shuffle, and ``shuffle=false`` must give every run the same global batches."""
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                self.examples,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
                shuffle=self.shuffle,
                seed=self.seed,
            )
        else:
            sampler = RecordedShuffle(self.examples) if self.shuffle else SequentialSampler(self.examples)
        return ResumableLoader(
            self.examples,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            epoch=self.epoch,
            trained=self.trained,
        )
