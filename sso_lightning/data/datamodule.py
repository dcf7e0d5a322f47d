"""The DataModule serves the current epoch's snapshot; the regeneration callback
replaces it before every epoch (``reload_dataloaders_every_n_epochs=1``)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from sso_lightning.data.batching import Collator
from sso_lightning.data.snapshot import SteeredExample


class SteeredDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int, keys: Sequence[str], pad_id: int, num_workers: int = 0):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collator = Collator(keys, pad_id)
        self.examples: list[SteeredExample] = []

    def set_examples(self, examples: list[SteeredExample]) -> None:
        self.examples = examples

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.examples, batch_size=self.batch_size, shuffle=True, collate_fn=self.collator,
            num_workers=self.num_workers,
        )
