"""Batching samples: right-padded batches, or several samples packed into each row.

    collate = PaddingCollator(pad_token_id=tok.pad_token_id)            # training: right padding
    batch = collate([ds[0], ds[1]])
    # input_ids, labels, attention_mask (B, L); pixel_values (N_img, T_max, 3, S, S) zero-padded on T;
    # image_sizes (N_img, 2) (h, w); images flat over the batch in the order their <image> runs appear.
    # No pixel_values / image_sizes keys when no sample has an image.

    pack = PackingCollator(max_length=2048, pad_token_id=tok.pad_token_id)
    batch = pack(samples)   # rows of several samples: input_ids, labels, position_ids, use_cache=False, ...

Packing: greedy first-fit by length (longest first) into rows of at most ``max_length`` tokens.
``position_ids`` restart at 0 for every sample, and the first label of each sample is -100 so it is never
predicted from the previous sample's last token. Attention stays inside each sample:

- ``attention="position_ids"`` (default): no ``attention_mask``; transformers 5.x builds a block-diagonal
  causal mask from the restarts in ``position_ids`` (``masking_utils.find_packed_sequence_indices``), for
  sdpa and eager alike — but only when ``past_key_values`` is None. A decoder called with the config's
  ``use_cache=True`` (the default, also in train mode) creates an empty cache first, and then silently
  uses a plain causal mask across samples (verified in transformers 5.23). So the batch carries
  ``use_cache=False``. That dense mask makes sdpa do the row's full L x L work;
  ``mllm.attention.use_packed_attention(llm)`` (which the stage runner calls when packing) switches sdpa to
  one causal call per sample. flash-attention-2 reads the restarts too (varlen), flex_attention builds a
  block-sparse mask from them.
- ``attention="4d"``: an explicit additive mask (B, 1, L, L), 0 where allowed and the float32 minimum
  elsewhere (eager adds it to the scores; sdpa takes it as is), for models whose mask code does not
  detect packing. Costs B*L*L*4 bytes.

Padding at the end of a packed row is its own sequence (positions from 0, labels -100).

With ``report_skips=True`` a collator also returns ``batch["data_skips"]``: the ``(reason, message,
key)`` skips the samples' workers found (see dataset.py); pop it before calling the model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from data_pipelines.tokenize import IGNORE_INDEX


def _images(samples: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    tiles = [t for s in samples for t in s["pixel_values"]]  # each (T_i, 3, S, S)
    if not tiles:
        return {}
    t_max = max(t.shape[0] for t in tiles)
    sizes = torch.tensor([list(hw) for s in samples for hw in s["image_sizes"]], dtype=torch.long)  # (N, 2)
    if tiles[0].dtype != torch.float32:  # numpy has no bfloat16
        pixel_values = tiles[0].new_zeros((len(tiles), t_max) + tuple(tiles[0].shape[1:]))
        for i, t in enumerate(tiles):
            pixel_values[i, : t.shape[0]] = t
        return {"pixel_values": pixel_values, "image_sizes": sizes}
    # numpy, not torch: a few MB of copies are slower through torch's OpenMP threads, which spin-wait and
    # contend on small machines (8 images x 5 tiles of 48 px on 2 busy cores: ~0.5 ms vs 13-39 ms)
    out = np.zeros((len(tiles), t_max) + tuple(tiles[0].shape[1:]), dtype=np.float32)  # (N, T_max, 3, S, S)
    for i, t in enumerate(tiles):
        out[i, : t.shape[0]] = t.numpy()
    return {"pixel_values": torch.from_numpy(out), "image_sizes": sizes}


def _skips(samples: Sequence[Dict[str, Any]]) -> List[Any]:
    return [e for s in samples for e in s.get("skipped", ())]


class PaddingCollator:
    def __init__(self, pad_token_id: int, *, padding_side: str = "right", pad_to_multiple_of: Optional[int] = None,
                 report_skips: bool = False):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("PaddingCollator needs a pad_token_id (the tokenizer has no pad token)")
        self.pad_token_id, self.padding_side = pad_token_id, padding_side
        self.pad_to_multiple_of, self.report_skips = pad_to_multiple_of, report_skips

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        if not samples:
            raise ValueError("PaddingCollator got an empty batch")
        width = max(s["input_ids"].shape[0] for s in samples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        B = len(samples)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, width), dtype=torch.long)
        for i, s in enumerate(samples):
            n = s["input_ids"].shape[0]
            sl = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[i, sl] = s["input_ids"]
            labels[i, sl] = s["labels"]
            attention_mask[i, sl] = 1
        batch: Dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        batch.update(_images(samples))
        if self.report_skips:
            batch["data_skips"] = _skips(samples)
        return batch


def pack_first_fit(lengths: Sequence[int], max_length: int) -> List[List[int]]:
    """Greedy first-fit decreasing: indices into bins of total length <= max_length. Deterministic (ties
    keep index order); each bin lists its indices in ascending order."""
    bins: List[List[int]] = []
    room: List[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"sample {i} has {n} tokens, more than the packing max_length={max_length} "
                             f"(build the dataset with max_length <= the packing length)")
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    return [sorted(b) for b in bins]


class PackingCollator:
    def __init__(self, max_length: int, pad_token_id: int, *, attention: str = "position_ids",
                 report_skips: bool = False):
        if attention not in ("position_ids", "4d"):
            raise ValueError(f"attention must be 'position_ids' or '4d', got {attention!r}")
        self.max_length, self.pad_token_id = max_length, pad_token_id
        self.attention, self.report_skips = attention, report_skips

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        if not samples:
            raise ValueError("PackingCollator got an empty batch")
        bins = pack_first_fit([int(s["input_ids"].shape[0]) for s in samples], self.max_length)
        width = max(sum(int(samples[i]["input_ids"].shape[0]) for i in b) for b in bins)
        R = len(bins)
        input_ids = torch.full((R, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((R, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((R, width), dtype=torch.long)
        seq_ids = torch.zeros((R, width), dtype=torch.long)  # which sample each position belongs to
        ordered = []
        for r, b in enumerate(bins):
            start = 0
            for k, i in enumerate(b):
                s = samples[i]
                n = int(s["input_ids"].shape[0])
                input_ids[r, start:start + n] = s["input_ids"]
                labels[r, start:start + n] = s["labels"]
                labels[r, start] = IGNORE_INDEX  # never predicted from the previous sample
                position_ids[r, start:start + n] = torch.arange(n)
                seq_ids[r, start:start + n] = k
                start += n
                ordered.append(s)
            position_ids[r, start:] = torch.arange(width - start)  # the padding run: its own sequence
            seq_ids[r, start:] = len(b)
        batch: Dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.attention == "4d":
            batch["attention_mask"] = packed_attention_mask(seq_ids)
        else:
            batch["use_cache"] = False
        batch.update(_images(ordered))
        if self.report_skips:
            batch["data_skips"] = _skips(samples)
        return batch


def packed_attention_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(R, L) sample index per position -> (R, 1, L, L) additive mask: causal within a sample only."""
    L = seq_ids.shape[1]
    same = seq_ids[:, :, None] == seq_ids[:, None, :]  # (R, L, L)
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    allowed = (same & causal)[:, None]  # (R, 1, L, L)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
