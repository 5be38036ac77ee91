"""Look at training data before spending GPU hours on it: ``mllm data check`` and ``mllm data preview``.

    builder = builder_for_config(get_preset("tiny"), tokenizer)     # no model weights are built
    report = check_files(["a.json", "b.parquet"], builder)          # formats, counts, skips, token lengths
    print(format_check(report))
    print(preview_record(records[3], builder))                      # the training text, targets marked

``check_files`` runs each record through exactly the training path (``MultimodalProcessor.encode_sample``: images
loaded and tiled, the template rendered, ``<image>`` expanded, truncation), so its skip counts and lengths
are what a run would see. In a preview, supervised tokens (the loss is on them) are shown between ``⟦`` and
``⟧`` and each run of image tokens as ``<image ×N>``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from data_pipelines.formats import detect_format, read_records
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record, RecordError, SkipStats
from data_pipelines.tokenize import IGNORE_INDEX, image_token_id
from mllm.geometry import ImageGeometry
from mllm.tokenizer import ensure_image_token

TARGET_OPEN, TARGET_CLOSE = "⟦", "⟧"


def geometry_for_config(cfg: Any):
    """The ``ImageGeometry`` a model built from ``cfg`` would have, from the configs alone (no weights)."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    kinds = {"hf_clip": (CLIPVisionConfig, True), "hf_siglip": (SiglipVisionConfig, False)}
    if cfg.vision.kind not in kinds:
        raise ValueError(f"vision.kind {cfg.vision.kind!r}: token counts need the built tower; pass --model CKPT")
    config_cls, has_cls = kinds[cfg.vision.kind]
    arch = config_cls(**{k: v for k, v in cfg.vision.config.items() if k in config_cls().to_dict()})
    pins = tuple(tuple(int(v) for v in p) for p in cfg.anyres.grid_pinpoints) if cfg.anyres.enabled else ()
    grid = cfg.connector.kind != "qformer"
    return ImageGeometry(tile_size=arch.image_size, patch_size=arch.patch_size, has_cls=has_cls,
                         select_strategy=cfg.vision.select_strategy, grid_pinpoints=pins,
                         image_newline=bool(pins) and cfg.anyres.image_newline and grid,
                         queries_per_tile=None if grid else cfg.connector.num_queries)


def builder_for_config(cfg: Any, tokenizer: Any, *, template: Optional[str] = None,
                       max_length: Optional[int] = None) -> MultimodalProcessor:
    ensure_image_token(tokenizer, cfg.image_token)
    return MultimodalProcessor.from_parts(cfg, tokenizer, geometry_for_config(cfg), template=template,
                                          max_length=max_length)


def check_files(paths: Sequence[str], builder: MultimodalProcessor, *, format: str = "auto",
                image_root: Optional[str] = None, limit: Optional[int] = None, progress: bool = True
                ) -> Dict[str, Any]:
    """Per file: detected format, records read, skips by reason (with examples), token lengths."""
    files = []
    for path in paths:
        fmt = detect_format(path) if format == "auto" else format
        stats = SkipStats(max_examples=3)
        lengths: List[int] = []
        truncated = 0
        records = read_records(path, fmt, stats=stats, image_root=image_root, max_samples=limit)
        for rec in tqdm(records, desc=f"check {path}", disable=not progress, unit="rec"):
            try:
                sample = builder.encode_sample(rec)
            except RecordError as err:
                stats.skip(err)
                continue
            lengths.append(sample["length"])
            truncated += int(sample["length"] == builder.max_length)
        # read-time skips (bad JSON line, unknown role, ...) and build-time ones (missing image, too long)
        files.append({"path": path, "format": fmt, "records": len(lengths) + stats.total,
                      "usable": len(lengths), "skipped": stats.as_dict(), "examples": dict(stats.examples),
                      "lengths": _length_summary(lengths), "histogram": histogram(lengths),
                      "at_max_length": truncated})
    return {"files": files, "template": builder.template.name, "max_length": builder.max_length}


def _length_summary(lengths: Sequence[int]) -> Dict[str, Any]:
    if not lengths:
        return {}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"min": s[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1],
            "mean": round(sum(s) / len(s), 1)}


def histogram(lengths: Sequence[int]) -> List[Dict[str, int]]:
    """Counts in power-of-two buckets [lo, hi)."""
    if not lengths:
        return []
    top = max(lengths)
    edges = [0] + [2 ** k for k in range(4, max(5, math.ceil(math.log2(top + 1)) + 1))]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        n = sum(lo <= x < hi for x in lengths)
        out.append({"lo": lo, "hi": hi, "count": n})
    while out and out[0]["count"] == 0:
        out.pop(0)
    return out


def format_check(report: Dict[str, Any], width: int = 40) -> str:
    lines = [f"template {report['template']!r}, max_length {report['max_length']}"]
    for f in report["files"]:
        sk = f["skipped"]
        lines += ["", f"{f['path']}: format {f['format']}, {f['records']} record(s), {f['usable']} usable, "
                      f"{sk['total']} skipped"]
        for reason, n in sk["by_reason"].items():
            lines.append(f"  skipped {reason}: {n}")
            lines += [f"      e.g. {ex}" for ex in f["examples"].get(reason, [])]
        if f["lengths"]:
            L = f["lengths"]
            lines.append(f"  tokens per sample: min {L['min']}, median {L['p50']}, p90 {L['p90']}, p99 {L['p99']}, "
                         f"max {L['max']} (mean {L['mean']}); {f['at_max_length']} cut to max_length")
            peak = max(b["count"] for b in f["histogram"]) or 1
            for b in f["histogram"]:
                bar = "#" * max(1 if b["count"] else 0, round(width * b["count"] / peak))
                lines.append(f"  {b['lo']:>6}-{b['hi'] - 1:<6} {b['count']:>8}  {bar}")
    return "\n".join(lines)


def preview_record(record: Record, builder: MultimodalProcessor) -> str:
    """The training text of ``record``: targets between ⟦ ⟧, image-token runs as <image ×N>."""
    sample = builder.encode_sample(record)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    image_id = image_token_id(builder.tokenizer, builder.image_token)
    kind = ["image" if t == image_id else "target" if lab != IGNORE_INDEX else "text" for t, lab in zip(ids, labels)]
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and kind[j] == kind[i]:
            j += 1
        if kind[i] == "image":
            parts.append(f"<image ×{j - i}>")
        else:
            text = builder.tokenizer.decode(ids[i:j], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            parts.append(f"{TARGET_OPEN}{text}{TARGET_CLOSE}" if kind[i] == "target" else text)
        i = j
    head = (f"# {record.where}: {len(ids)} tokens, {sum(k == 'target' for k in kind)} supervised, "
            f"{len(sample['image_sizes'])} image(s) {sample['image_sizes']}, template {builder.template.name!r}")
    return head + "\n" + "".join(parts)
