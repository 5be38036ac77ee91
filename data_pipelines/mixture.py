"""Several sources mixed with weights in one stage, from a YAML spec; deterministic from a seed.

    # stage2_mix.yaml
    seed: 0
    num_samples: 20000            # optional; default: the sum of the sources' sizes
    sources:
      - {path: data/shapes/vqa_train.json, format: llava, weight: 3}
      - {path: data/chat.jsonl, format: sharegpt, image_root: data/img, weight: 1, max_samples: 5000}

    spec = MixtureSpec.from_yaml("stage2_mix.yaml")
    records = load_mixture(spec, stats=stats)                       # map-style list of Records
    stream = StreamingMultimodalDataset(spec.stream, processor)       # or streamed (``spec.stream(stats, strict)``)

``weight`` is a share of the mixture: of ``num_samples`` records, source i gets a quota of
``num_samples * w_i / sum(w)`` (largest remainders, so the quotas add up exactly). A source with fewer
records than its quota is repeated (each pass in a fresh seeded order); one with more gives a seeded
random subset. Without any weights the shares are the sources' sizes, so every record appears once
(``num_samples`` then scales all sources alike); give every source a weight or none. ``max_samples`` caps
how many records are read from a source first. The sources are then interleaved in a seeded random
order. Streaming draws the source of each next record with probabilities ``w_i / sum(w)`` (equal without
weights: sizes are unknown there) and stops when any source runs out (HF ``interleave_datasets``'
"first_exhausted").
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import yaml

from data_pipelines.formats import read_records
from data_pipelines.records import Record, SkipStats
from mllm import typed

_SOURCE_FIELDS = ("path", "format", "image_root", "weight", "max_samples", "split", "image_placement")


@dataclass
class SourceSpec:
    path: str
    format: str = "auto"
    image_root: Optional[str] = None
    weight: Optional[float] = None  # None: in proportion to the source's size (see the module docstring)
    max_samples: Optional[int] = None
    split: str = "train"  # HF sources only
    image_placement: Optional[str] = None  # None: the format's default

    def reader_kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"image_root": self.image_root, "max_samples": self.max_samples}
        if self.image_placement is not None:
            kw["image_placement"] = self.image_placement
        if self.format == "hf" or (self.format == "auto" and (os.path.isdir(self.path) or
                                                              self.path.endswith(".parquet"))):
            kw["split"] = self.split
        return kw


@dataclass
class MixtureSpec:
    sources: List[SourceSpec]
    seed: int = 0
    num_samples: Optional[int] = None

    def __post_init__(self):
        if not self.sources:
            raise ValueError("a mixture needs at least one source")
        given = [s.weight is not None for s in self.sources]
        if any(given) and not all(given):
            raise ValueError("give every source a weight or none (without weights, sources mix by size)")
        for i, s in enumerate(self.sources):
            if s.weight is not None and not (isinstance(s.weight, (int, float)) and s.weight > 0):
                raise ValueError(f"sources[{i}] ({s.path}): weight must be a positive number, got {s.weight!r}")
            if s.max_samples is not None and (not isinstance(s.max_samples, int) or s.max_samples < 1):
                raise ValueError(f"sources[{i}] ({s.path}): max_samples must be a positive integer")

    @classmethod
    def from_dict(cls, data: Dict[str, Any], base_dir: Optional[str] = None, where: str = "mixture") -> "MixtureSpec":
        if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
            raise ValueError(f"{where}: expected a mapping with a 'sources' list")
        unknown = sorted(set(data) - {"sources", "seed", "num_samples"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: sources, seed, num_samples")
        sources = []
        for i, item in enumerate(data["sources"]):
            if not isinstance(item, dict) or "path" not in item:
                raise ValueError(f"{where}: sources[{i}] must be a mapping with a 'path'")
            bad = sorted(set(item) - set(_SOURCE_FIELDS))
            if bad:
                raise ValueError(f"{where}: sources[{i}]: unknown field(s) {', '.join(bad)}; known: "
                                 f"{', '.join(_SOURCE_FIELDS)}")
            item = dict(item)
            for key in ("path", "image_root"):  # relative to the YAML file
                if base_dir and item.get(key) and not os.path.isabs(item[key]):
                    item[key] = os.path.join(base_dir, item[key])
            sources.append(typed.from_dict(SourceSpec, item, path=f"sources[{i}]", where=where))
        try:
            return cls(sources, seed=typed.coerce(int, data.get("seed", 0), "seed"),
                       num_samples=typed.coerce(Optional[int], data.get("num_samples"), "num_samples"))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str) -> "MixtureSpec":
        with open(path) as f:
            data = yaml.safe_load(f)
        return cls.from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), where=path)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def weights(self) -> List[float]:
        """Streaming probabilities (equal when no weights were given)."""
        raw = [s.weight if s.weight is not None else 1.0 for s in self.sources]
        return [w / sum(raw) for w in raw]

    def stream(self, stats: SkipStats, strict: bool = False) -> Iterator[Record]:
        """Weighted random interleaving of the sources' record streams (a ``StreamingMultimodalDataset``
        source); stops when the first source is exhausted."""
        its = [iter(read_records(s.path, s.format, stats=stats, strict=strict, **s.reader_kwargs()))
               for s in self.sources]
        rng = random.Random(self.seed)
        while True:
            k = rng.choices(range(len(its)), weights=self.weights)[0]
            try:
                yield next(its[k])
            except StopIteration:
                return


def quotas(num_samples: int, weights: Sequence[float]) -> List[int]:
    """Largest-remainder apportionment: integers proportional to ``weights`` summing to ``num_samples``."""
    total = sum(weights)
    exact = [num_samples * w / total for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: num_samples - sum(out)]:
        out[i] += 1
    return out


def _take(records: List[Record], n: int, rng: random.Random) -> List[Record]:
    """``n`` records: whole seeded passes over ``records``, then a seeded subset for the remainder."""
    out: List[Record] = []
    while len(out) + len(records) <= n:
        out += rng.sample(records, len(records))
    if len(out) < n:
        out += rng.sample(records, n - len(out))
    return out


def load_mixture(spec: MixtureSpec, *, stats: Optional[SkipStats] = None, strict: bool = False) -> List[Record]:
    """Read every source (good records only, counted into ``stats``) and mix them by the quotas."""
    stats = stats if stats is not None else SkipStats()
    per_source = []
    for s in spec.sources:
        recs = list(read_records(s.path, s.format, stats=stats, strict=strict, **s.reader_kwargs()))
        if not recs:
            raise ValueError(f"mixture source {s.path}: no usable records ({stats.summary()})")
        per_source.append(recs)
    sizes = [len(r) for r in per_source]
    n = spec.num_samples if spec.num_samples is not None else sum(sizes)
    weights = [s.weight for s in spec.sources] if spec.sources[0].weight is not None else sizes
    rng = random.Random(spec.seed)
    chosen = [_take(recs, q, rng) for recs, q in zip(per_source, quotas(n, weights))]
    labels = [k for k, c in enumerate(chosen) for _ in c]
    rng.shuffle(labels)
    cursors = [0] * len(chosen)
    out = []
    for k in labels:
        out.append(chosen[k][cursors[k]])
        cursors[k] += 1
    return out
