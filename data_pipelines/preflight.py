"""Pre-flight: check the first samples of a run before training on them.

    report = preflight(dataset, indices=list(sampler.rank_indices())[:64])   # raises on a real problem
    log.info("preflight: %s", report)   # {"checked": 64, "skipped": 1, "tokens": ..., "target_tokens": ...}

For each sample (in the order the run will see them): the segment-wise token ids must decode to exactly
the rendered conversation (``TokenizationMismatch`` otherwise), at least one label must be a target
(``AllMaskedError``), and each image's run of ``<image>`` ids must have the geometry's length. These are
errors, never warnings: LLaVA printed "tokenization mismatch" and trained on all-masked labels (zero loss)
when its tokenizer changed. Bad *records* (a missing image, too long) are not pre-flight failures: they
are skipped and counted as in training, and reported here.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from data_pipelines.records import RecordError, SkipStats
from data_pipelines.tokenize import IGNORE_INDEX, AllMaskedError, image_token_id


class PreflightError(ValueError):
    pass


def _runs_match(runs: Sequence[int], expected: Sequence[int]) -> bool:
    """Images placed side by side form one run of ids: each run must be the sum of the next images' counts."""
    k = 0
    for run in runs:
        total = 0
        while total < run and k < len(expected):
            total += expected[k]
            k += 1
        if total != run:
            return False
    return k == len(expected)


def _check_sample(sample: Dict[str, Any], processor: Any, where: str) -> None:
    labels = sample["labels"]
    if bool((labels == IGNORE_INDEX).all()):
        raise AllMaskedError(f"{where}: every label is -100; training on it would give zero loss")
    image_id = image_token_id(processor.tokenizer, processor.image_token)
    ids = sample["input_ids"]
    is_image = (ids == image_id).long()
    # run lengths of consecutive image ids, in order
    edges = torch.diff(torch.cat([is_image.new_zeros(1), is_image, is_image.new_zeros(1)]))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    runs = (ends - starts).tolist()
    expected = [processor.geometry.num_image_tokens(hw) for hw in sample["image_sizes"]]
    if not _runs_match(runs, expected) or len(sample["pixel_values"]) != len(expected):
        raise PreflightError(f"{where}: image token runs {runs} do not match the images' token counts {expected}")
    for t, hw in zip(sample["pixel_values"], sample["image_sizes"]):
        if t.shape[0] != processor.geometry.num_tiles(hw):
            raise PreflightError(f"{where}: an image of size {hw} has {t.shape[0]} tiles, the geometry says "
                                 f"{processor.geometry.num_tiles(hw)}")


def preflight(dataset: Any, indices: Optional[Sequence[int]] = None, num_samples: int = 64,
              stats: Optional[SkipStats] = None) -> Dict[str, Any]:
    """Check up to ``num_samples`` samples (``indices`` in run order, default the first ones).

    Works on ``MultimodalDataset`` (by index) and ``StreamingMultimodalDataset`` (the first records of its
    source). Returns a small report; raises ``TokenizationMismatch``, ``AllMaskedError`` or
    ``PreflightError`` naming the record.
    """
    stats = stats if stats is not None else SkipStats()
    processor = dataset.processor
    if hasattr(dataset, "records"):
        order: Iterable[int] = indices if indices is not None else range(len(dataset))
        records: Iterable[Any] = (_record_or_error(dataset.records, i) for i in order)
    else:
        records = dataset.source(stats, dataset.strict)
    checked = tokens = targets = 0
    for rec in itertools.islice(records, num_samples):
        if isinstance(rec, RecordError):
            stats.skip(rec)
            continue
        try:
            sample = processor.encode_sample(rec, verify=True)
        except RecordError as err:
            stats.skip(err)
            continue
        _check_sample(sample, processor, rec.where)
        checked += 1
        tokens += sample["length"]
        targets += int((sample["labels"] != IGNORE_INDEX).sum())
    if checked == 0:
        raise PreflightError(f"preflight: none of the first {num_samples} records could be built "
                             f"({stats.summary()})")
    return {"checked": checked, "skipped": stats.as_dict(), "tokens": tokens, "target_tokens": targets,
            "target_fraction": round(targets / max(tokens, 1), 4)}


def _record_or_error(records: Any, i: int) -> Any:
    try:
        return records[i]
    except RecordError as err:
        return err
