"""One epoch of training batches: the order depends only on (seed, epoch), and each process takes its slice.

Because nothing carries over from one epoch to the next, a run resumed at an epoch boundary sees the
same batches as an uninterrupted one, and N processes together see exactly the one-process batches.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.base import in_memory


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def global_batches(n: int, batch_size: int, seed: int, epoch: int, steps: int) -> list[torch.Tensor]:
    """The first ``steps`` batches of a seeded permutation of ``range(n)``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    return list(order.split(batch_size))[:steps]


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's contiguous part of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(batch, world)[rank] if world > 1 else batch


def steps_per_epoch(data: Dataset, batch_size: int, max_steps: int | None) -> int:
    full = -(-len(data) // batch_size)
    return min(full, max_steps or full)


def epoch_batches(data: Dataset, batch_size: int, seed: int, epoch: int, steps: int, device: torch.device,
                  rank: int = 0, world: int = 1, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on ``device`` for this process; in-memory image sets are gathered and augmented there."""
    batches = [shard(b, rank, world) for b in global_batches(len(data), batch_size, seed, epoch, steps)]
    resident = in_memory(data)
    if resident is not None:
        images, mapping = resident
        gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch) * 64 + rank)
        for b in batches:
            yield images.batch(b if mapping is None else mapping[b], gen, device)
        return
    torch.manual_seed(epoch_seed(seed, epoch) * 64 + rank)  # per-item augmentation draws from the global RNG
    loader = DataLoader(data, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
