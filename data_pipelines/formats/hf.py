"""HF ``datasets`` sources: a ``save_to_disk`` directory, parquet, JSON/JSONL, or an imagefolder.

    records = HFRecords.load("data/llava_parquet/")               # map-style, rows converted lazily
    for rec in read_hf("data/train.parquet", streaming=True): ... # streaming, nothing loaded up front
    ds = load_hf("data/imgs/", data_format="imagefolder")          # the datasets.Dataset itself

Which loader: ``data_format`` when given (``disk | parquet | json | imagefolder``), else a directory holding
``dataset_info.json`` or ``dataset_dict.json`` is a ``save_to_disk`` copy, ``*.parquet`` / ``*.json(l)``
files (or a folder of them) use the parquet / json builder, and any other folder is an imagefolder.

A row becomes a record by its columns: ``conversations`` (LLaVA turns, images in ``image`` / ``images``),
``messages`` (ShareGPT/OpenAI, see ``sharegpt.py``), or an image plus ``caption`` / ``text`` (a caption
pair: user ``<image>``, assistant the caption). Images may be paths (relative to ``image_root``, default
the data's folder), bytes, ``{"bytes", "path"}`` dicts or ``Image()`` features; ``Image()`` columns are
cast to ``decode=False`` so nothing is decoded until a sample is built (in a DataLoader worker).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from data_pipelines.formats.llava import llava_record
from data_pipelines.formats.sharegpt import sharegpt_record
from data_pipelines.records import IMAGE_MARKER, Origin, Record, RecordError, SkipStats, check_record, resolve_image

HF_FORMATS = ("disk", "parquet", "json", "imagefolder")
CAPTION_COLUMNS = ("caption", "text")


def detect_hf_format(path: str) -> str:
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json")):
            return "disk"
        names = os.listdir(path)
        if names and all(n.endswith(".parquet") for n in names if not n.startswith(".")):
            return "parquet"
        return "imagefolder"
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith((".json", ".jsonl")):
        return "json"
    raise ValueError(f"{path}: cannot tell which HF datasets loader to use; pass data_format= one of "
                     f"{', '.join(HF_FORMATS)}")


def load_hf(path: str, *, split: str = "train", streaming: bool = False, data_format: Optional[str] = None,
            cache_dir: Optional[str] = None):
    """Load ``path`` as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming), images undecoded."""
    import datasets

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"HF dataset path {path!r} does not exist")
    kind = data_format or detect_hf_format(path)
    if kind not in HF_FORMATS:
        raise ValueError(f"unknown HF data_format {kind!r}; known: {', '.join(HF_FORMATS)}")
    if kind == "disk":
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r}; it holds {', '.join(ds)}")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    elif kind == "imagefolder":
        ds = datasets.load_dataset("imagefolder", data_dir=path, split=split, streaming=streaming,
                                   cache_dir=cache_dir)
    else:
        files = path if os.path.isfile(path) else sorted(
            glob.glob(os.path.join(path, "*.parquet" if kind == "parquet" else "*.json*")))
        if not files:
            raise ValueError(f"{path}: no {kind} files found")
        ds = datasets.load_dataset(kind, data_files={split: files}, split=split, streaming=streaming,
                                   cache_dir=cache_dir)
    return _undecoded_images(ds)


def _undecoded_images(ds):
    from datasets import Image, List

    features = ds.features or {}
    for name, feat in features.items():
        if isinstance(feat, Image) and feat.decode:
            ds = ds.cast_column(name, Image(decode=False))
        elif isinstance(feat, List) and isinstance(feat.feature, Image) and feat.feature.decode:
            ds = ds.cast_column(name, List(Image(decode=False)))
    return ds


def row_record(row: Dict[str, Any], origin: Origin, image_root: Optional[str] = None,
               image_placement: Optional[str] = None) -> Record:
    """One HF row -> a record, by its columns (see the module docstring)."""
    if "conversations" in row and row["conversations"] is not None:
        return llava_record(row, origin, image_root, image_placement or "front")
    if "messages" in row and row["messages"] is not None:
        return sharegpt_record(row, origin, image_root, image_placement or "keep")
    caption_col = next((c for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), None)
    image = row.get("image")
    rid = str(row["id"]) if row.get("id") is not None else str(origin)
    if caption_col is None or image is None:
        raise RecordError("malformed_record", f"row has none of 'conversations', 'messages', or an image with "
                          f"{' / '.join(CAPTION_COLUMNS)} (columns: {', '.join(sorted(row))})", origin, rid)
    try:
        source = resolve_image(image, image_root)
    except ValueError as e:
        raise RecordError("malformed_record", str(e), origin, rid, "image") from None
    messages = [{"role": "user", "content": IMAGE_MARKER},
                {"role": "assistant", "content": row[caption_col]}]
    return check_record(Record(rid, messages, [source], origin), image_placement or "keep")


def _row_text(row: Dict[str, Any]) -> str:
    if row.get("conversations"):
        return "".join(t.get("value") or "" for t in row["conversations"] if isinstance(t, dict))
    if row.get("messages"):
        parts = []
        for m in row["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # image parts count as one marker each
                parts += [p.get("text") or "" if p.get("type") == "text" else IMAGE_MARKER
                          for p in content if isinstance(p, dict)]
        return "".join(parts)
    return next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), "")


def _default_root(path: str) -> str:
    path = os.path.abspath(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


class HFRecords:
    """A map-style view of an HF dataset as records: ``len()``, and ``[i]`` converts row ``i`` (raising
    ``RecordError`` for a bad row; the dataset built on it skips and counts)."""

    def __init__(self, ds, name: str, image_root: Optional[str] = None, image_placement: Optional[str] = None):
        self.ds, self.name, self.image_root, self.image_placement = ds, name, image_root, image_placement

    @classmethod
    def load(cls, path: str, *, split: str = "train", data_format: Optional[str] = None,
             image_root: Optional[str] = None, image_placement: Optional[str] = None,
             max_samples: Optional[int] = None, cache_dir: Optional[str] = None) -> "HFRecords":
        ds = load_hf(path, split=split, data_format=data_format, cache_dir=cache_dir)
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
        root = image_root if image_root is not None else _default_root(path)
        return cls(ds, os.fspath(path), root, image_placement)

    def __len__(self) -> int:
        return len(self.ds)

    def length_hints(self) -> List[Tuple[int, int]]:
        """(characters of text, number of images) per row, reading only the text columns (image bytes in a
        parquet file are never read); for the sampler's length estimates."""
        cols = [c for c in ("conversations", "messages", *CAPTION_COLUMNS) if c in self.ds.column_names]
        has_image = any(c in self.ds.column_names for c in ("image", "images"))
        hints = []
        for row in self.ds.select_columns(cols):
            text = _row_text(row)
            markers = text.count(IMAGE_MARKER)
            if not (row.get("conversations") or row.get("messages")):
                markers = 1 if has_image else 0  # a caption row: its one image has no marker
            hints.append((len(text), markers))
        return hints

    def __getitem__(self, i: int) -> Record:
        return row_record(self.ds[int(i)], Origin(self.name, index=int(i)), self.image_root, self.image_placement)


def read_hf(path: str, *, split: str = "train", streaming: bool = False, data_format: Optional[str] = None,
            image_root: Optional[str] = None, image_placement: Optional[str] = None,
            stats: Optional[SkipStats] = None, strict: bool = False, max_samples: Optional[int] = None,
            cache_dir: Optional[str] = None) -> Iterator[Record]:
    """Iterate the good records of an HF source in row order, counting (or, strict, raising on) bad rows."""
    ds = load_hf(path, split=split, streaming=streaming, data_format=data_format, cache_dir=cache_dir)
    root = image_root if image_root is not None else _default_root(path)
    own = stats is None
    stats = SkipStats() if own else stats
    kept = 0
    name = os.fspath(path)
    for i, row in enumerate(ds):
        if max_samples is not None and kept >= max_samples:
            break
        try:
            record = row_record(row, Origin(name, index=i), root, image_placement)
        except RecordError as err:
            stats.skip(err, strict=strict)
            continue
        yield record
        kept += 1
    if own and stats.total:
        stats.log()
