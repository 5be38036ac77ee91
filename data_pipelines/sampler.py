"""A length-grouped, modality-grouped, distributed, resumable sampler (LLaVA's ``group_by_modality_length``).

    sampler = LengthGroupedSampler(ds.lengths, ds.modalities, batch_size=8, world_size=W, rank=r, seed=0)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, collate_fn=...)
    for epoch in range(E):
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader): ...
            state = sampler.state_dict(consumed=(step + 1) * 8)   # save with the checkpoint
    sampler.load_state_dict(state)   # the next iteration yields exactly the samples not yet consumed

Order of one epoch (the same on every rank, from ``seed + epoch``): each modality group (image / text;
one group when ``group_by_modality=False``) is shuffled and cut into megabatches of ``world_size *
batch_size`` samples; each megabatch is sorted by length and dealt to the ranks so their total lengths are
close (the longest first, each to the rank with the least so far, ``batch_size`` per rank); the full
megabatches of all groups are shuffled together; the leftovers of both groups form the last, mixed
megabatch(es). So every batch but the last few holds one modality and similar lengths, as in LLaVA's
``get_modality_length_grouped_indices``. The epoch is padded (repeating its first samples) to a multiple
of ``world_size``, so all ranks run the same number of steps (``drop_last=True`` drops the tail instead).

Resuming: ``state_dict()`` holds the epoch and how many of this rank's samples were consumed. Without
``consumed=`` it is how many the iterator has yielded — exact with ``num_workers=0``; DataLoader workers
prefetch, so then pass the count the training loop has actually consumed.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], modalities: Optional[Sequence[str]] = None, batch_size: int = 1, *,
                 world_size: int = 1, rank: int = 0, seed: int = 0, group_by_modality: bool = True,
                 drop_last: bool = False):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, world_size={world_size}, rank={rank}")
        if modalities is not None and len(modalities) != len(lengths):
            raise ValueError(f"{len(lengths)} lengths but {len(modalities)} modalities")
        if not len(lengths):
            raise ValueError("LengthGroupedSampler: no samples")
        self.lengths = [int(n) for n in lengths]
        self.modalities = list(modalities) if modalities is not None else ["text"] * len(lengths)
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.group_by_modality, self.drop_last = group_by_modality, drop_last
        self.epoch = 0
        self.position = 0  # samples of this rank yielded (or consumed) in the current epoch

    # ---- the order -----------------------------------------------------------------------------------------
    def _megabatches(self, g: torch.Generator) -> List[List[int]]:
        if self.group_by_modality:
            groups: Dict[str, List[int]] = {}
            for i, m in enumerate(self.modalities):
                groups.setdefault(str(m), []).append(i)
            group_list = [groups[k] for k in sorted(groups)]
        else:
            group_list = [list(range(len(self.lengths)))]
        size = self.world_size * self.batch_size
        full: List[List[int]] = []
        leftovers: List[int] = []
        for group in group_list:
            perm = [group[int(k)] for k in torch.randperm(len(group), generator=g)]
            cut = len(perm) - len(perm) % size
            full += [perm[s:s + size] for s in range(0, cut, size)]
            leftovers += perm[cut:]
        order = [full[int(k)] for k in torch.randperm(len(full), generator=g)]
        if leftovers:
            order += [leftovers[s:s + size] for s in range(0, len(leftovers), size)]
        return order

    def _deal(self, megabatch: List[int]) -> List[List[int]]:
        """Sort by length (longest first) and deal to ranks: each to the rank with the least total so far
        among those with room; every rank gets len // world_size samples."""
        per_rank = len(megabatch) // self.world_size
        chunks: List[List[int]] = [[] for _ in range(self.world_size)]
        totals = [0] * self.world_size
        for i in sorted(megabatch, key=lambda k: (-self.lengths[k], k)):
            r = min((r for r in range(self.world_size) if len(chunks[r]) < per_rank), key=lambda r: (totals[r], r))
            chunks[r].append(i)
            totals[r] += self.lengths[i]
        return chunks

    def rank_indices(self, epoch: Optional[int] = None) -> List[int]:
        """This rank's whole index sequence for ``epoch`` (default: the current one)."""
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        megabatches = self._megabatches(g)
        flat = [i for mb in megabatches for i in mb]
        if self.drop_last:
            flat = flat[: len(flat) - len(flat) % self.world_size]
        elif len(flat) % self.world_size:
            pad = self.world_size - len(flat) % self.world_size
            flat += (flat * (pad // len(flat) + 1))[:pad]
        out: List[int] = []
        size = self.world_size * self.batch_size
        for s in range(0, len(flat), size):
            out += self._deal(flat[s:s + size])[self.rank]
        return out

    # ---- Sampler API ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_indices()
        start = self.position
        for k in range(start, len(indices)):
            self.position = k + 1
            yield indices[k]
        # the epoch is over: a later iteration (without set_epoch) starts it again from the top
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, Any]:
        position = self.position if consumed is None else int(consumed)
        if not 0 <= position <= len(self):
            raise ValueError(f"consumed={position} is outside this rank's epoch of {len(self)} samples")
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "num_samples": len(self.lengths),
                "world_size": self.world_size, "rank": self.rank, "batch_size": self.batch_size}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("seed", "num_samples", "world_size", "batch_size"):
            mine = self.seed if key == "seed" else len(self.lengths) if key == "num_samples" else getattr(self, key)
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]} but this sampler has {mine}; "
                                 f"resuming would repeat or skip samples")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
