"""Left-padded batches of token rows, the one implementation every generation path uses.

    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)   # (2, 3) each: [[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]]
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (ids, mask) (B, L_max), real tokens at the right end (generation appends there)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask
