"""Sharding work across the ranks of a Lightning run and gathering the results.

Generation, judging and reference scoring are split round-robin over ranks (item i goes
to rank i % world_size); every rank then holds the gathered result, so all ranks train on
the same snapshot, which rank 0 alone writes."""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist


def shard(items: Sequence, trainer) -> list:
    return list(items[trainer.global_rank :: trainer.world_size])


def gather(local: list, trainer) -> list:
    """Every rank gets all ranks' items, merged round-robin: the exact inverse of ``shard``
    (original order) when the lists are the shards themselves, deterministic otherwise."""
    if trainer.world_size == 1:
        return list(local)
    shards: list = [None] * trainer.world_size
    dist.all_gather_object(shards, local)
    longest = max(len(part) for part in shards)
    return [part[i] for i in range(longest) for part in shards if i < len(part)]
