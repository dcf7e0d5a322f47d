"""Sharding work across the processes of a run and gathering the results.

Generation, judging and reference scoring are split round-robin over ranks (item i goes
to rank i % world_size); every rank then holds the gathered result, so all ranks train on
the same snapshot, which rank 0 alone writes. ``Ranks`` is all the pipeline knows of the
run's processes, so it runs the same without a Trainer (one process)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    global_rank: int = 0
    world_size: int = 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def shard(items: Sequence, ranks: Ranks) -> list:
    return list(items[ranks.global_rank :: ranks.world_size])


def gather(local: list, ranks: Ranks) -> list:
    """Every rank gets all ranks' items, merged round-robin: the exact inverse of ``shard``
    (original order) when the lists are the shards themselves, deterministic otherwise."""
    if ranks.world_size == 1:
        return list(local)
    shards: list = [None] * ranks.world_size
    dist.all_gather_object(shards, local)
    longest = max(len(part) for part in shards)
    return [part[i] for i in range(longest) for part in shards if i < len(part)]
