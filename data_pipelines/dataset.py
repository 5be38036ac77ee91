"""Datasets of model-ready samples: map-style over records, or streaming over a record iterator.

    records = load_records("data/shapes/instruct_train.json")
    ds = MultimodalDataset.for_model(records, model, max_length=1024)     # template, geometry from the model
    ds[0] -> {"input_ids": (L,) long, "labels": (L,) long, "pixel_values": [(T_i, 3, S, S)],
              "image_sizes": [(h, w)], "length": L, "modality": "image" | "text", "id": str, "skipped": [...]}
    loader = DataLoader(ds, batch_size=8, sampler=LengthGroupedSampler(ds.lengths, ds.modalities, 8),
                        collate_fn=PaddingCollator(model.tokenizer.pad_token_id), num_workers=2)
    ds = MultimodalDataset(records, MultimodalProcessor.for_model(model, template="chatml"))

    stream = StreamingMultimodalDataset.for_model(stream_source("big.jsonl"), model)  # IterableDataset

Each sample is ``MultimodalProcessor.encode_sample(record)`` (``data_pipelines.processor``), the encoder
chat, eval and export verification share. Images are loaded lazily in ``__getitem__`` (so DataLoader workers do the decoding and AnyRes tiling).
A record that turns out bad there (missing / unreadable image, too long, a bad HF row) never stops a run:
``ds[i]`` returns the next good record after ``i`` (deterministic, wrapping around) and counts the bad one
once in ``ds.stats``; ``strict=True`` raises instead. Because workers are separate processes, each sample
also lists the skips found while building it (``"skipped"``: ``(reason, message, key)`` triples);
``PaddingCollator(report_skips=True)`` gathers them into ``batch["data_skips"]`` for the training loop to
``stats.add_events(...)``, de-duplicated by key, so the main process's counts are exact.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from data_pipelines.formats import read_records
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record, RecordError, SkipStats

logger = logging.getLogger("data_pipelines")

# rough characters per token, only for the sampler's length estimates (exact lengths come from building)
CHARS_PER_TOKEN = 4


class SkippingDataset(Dataset):
    """Map-style dataset whose bad records are skipped: item ``i`` is the first good record from ``i`` on
    (wrapping), with the skips found on the way in ``sample["skipped"]``; counted in ``self.stats``.
    Subclasses give ``build(i)`` (a sample dict or ``RecordError``) and set ``strict``, ``stats``, ``_bad``."""

    strict: bool
    stats: SkipStats
    _bad: set

    def __getitem__(self, i: int) -> Dict[str, Any]:
        n = len(self)
        events: List[Tuple[str, str, Any]] = []
        for step in range(n):
            j = (int(i) + step) % n
            if j in self._bad:
                continue
            try:
                sample = self.build(j)
            except RecordError as err:
                if self.strict:
                    raise
                self._bad.add(j)
                if self.stats.add(err.reason, str(err), err.key):
                    logger.debug("skipped %s", err)
                events.append((err.reason, str(err), err.key))
                continue
            sample["skipped"] = events
            return sample
        raise RuntimeError(f"{type(self).__name__}: all {n} records are bad ({self.stats.summary()})")


class MultimodalDataset(SkippingDataset):
    """Map-style: ``records`` is any sequence of ``Record`` (a list, or ``HFRecords`` that converts rows
    lazily and may raise ``RecordError``)."""

    def __init__(self, records: Sequence[Record], processor: MultimodalProcessor, *, strict: bool = False,
                 stats: Optional[SkipStats] = None):
        if len(records) == 0:
            raise ValueError("MultimodalDataset: no records (every record of the source was skipped?)")
        self.records, self.processor, self.strict = records, processor, strict
        self.stats = stats if stats is not None else SkipStats()
        self._bad: set = set()  # indices known bad in this process
        self._lengths: Optional[List[int]] = None
        self._modalities: Optional[List[str]] = None

    @classmethod
    def for_model(cls, records: Sequence[Record], model: Any, *, max_length: Optional[int] = None,
                  template: Optional[str] = None, system: Optional[str] = None, strict: bool = False,
                  stats: Optional[SkipStats] = None) -> "MultimodalDataset":
        processor = MultimodalProcessor.for_model(model, max_length=max_length, template=template, system=system)
        return cls(records, processor, strict=strict, stats=stats)

    def __len__(self) -> int:
        return len(self.records)

    def build(self, i: int, verify: bool = False) -> Dict[str, Any]:
        """Record ``i`` as a sample, or ``RecordError``; no skipping (``preflight`` uses this)."""
        return self.processor.encode_sample(self.records[i], verify=verify)

    # ---- for the sampler: estimates that need no image loading ---------------------------------------------
    # tokens ~ characters / CHARS_PER_TOKEN + per image the count of a tile-sized square image
    def _scan(self) -> None:
        per_image = self.processor.geometry.num_image_tokens((self.processor.geometry.tile_size,) * 2)
        if hasattr(self.records, "length_hints"):  # HF: text columns only, no image bytes read
            hints = self.records.length_hints()
        else:
            hints = [(sum(len(m["content"]) for m in r.messages), len(r.images)) for r in self.records]
        self._lengths = [chars // CHARS_PER_TOKEN + n * per_image for chars, n in hints]
        self._modalities = ["image" if n else "text" for _, n in hints]

    @property
    def lengths(self) -> List[int]:
        if self._lengths is None:
            self._scan()
        return self._lengths  # type: ignore[return-value]

    @property
    def modalities(self) -> List[str]:
        if self._modalities is None:
            self._scan()
        return self._modalities  # type: ignore[return-value]


def _read_source(path: str, format: str, kwargs: Dict[str, Any], stats: SkipStats, strict: bool) -> Iterator[Record]:
    return read_records(path, format, stats=stats, strict=strict, **kwargs)


Source = Callable[[SkipStats, bool], Iterable[Record]]


def stream_source(path: str, format: str = "auto", **kwargs: Any) -> Source:
    """A picklable record source for ``StreamingMultimodalDataset``: ``source(stats, strict)`` streams
    ``path`` (keyword arguments go to the format's reader, e.g. ``image_root``, ``streaming=True`` for hf)."""
    return functools.partial(_read_source, path, format, kwargs)


class StreamingMultimodalDataset(IterableDataset):
    """Iterable: ``source(stats, strict)`` yields records (re-read each epoch). Records are dealt round-robin to
    ``world_size`` ranks x DataLoader workers, so each record goes to exactly one worker of one rank."""

    def __init__(self, source: Source, processor: MultimodalProcessor, *,
                 rank: int = 0, world_size: int = 1, strict: bool = False, stats: Optional[SkipStats] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.source, self.processor, self.rank, self.world_size, self.strict = source, processor, rank, world_size, strict
        self.stats = stats if stats is not None else SkipStats()

    @classmethod
    def for_model(cls, source: Source, model: Any, *,
                  max_length: Optional[int] = None, template: Optional[str] = None, **kwargs: Any):
        return cls(source, MultimodalProcessor.for_model(model, max_length=max_length, template=template), **kwargs)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + wid
        read_stats = SkipStats(keep_events=True)
        events: List[Tuple[str, str, Any]] = []
        for k, record in enumerate(self.source(read_stats, self.strict)):
            # every worker reads every record, so read-time skips are reported by shard 0 alone
            if read_stats.events:
                if shard == 0:
                    events += read_stats.events
                    self.stats.add_events(read_stats.events)
                read_stats.events = []
            if k % shards != shard:
                continue
            try:
                sample = self.processor.encode_sample(record)
            except RecordError as err:
                if self.strict:
                    raise
                if self.stats.add(err.reason, str(err), err.key):
                    logger.debug("skipped %s", err)
                events.append((err.reason, str(err), err.key))
                continue
            sample["skipped"], events = events, []
            yield sample
        if shard == 0:
            self.stats.add_events(read_stats.events)
            events += read_stats.events
        if events and info is not None:
            self.stats.log()  # skips after this worker's last sample cannot ride on a sample: log them here
