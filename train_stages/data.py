"""A stage's data: the mixture of its sources -> dataset -> sampler -> collator (data_pipelines does the work).

The sampler yields the *global* order (modality- and length-grouped, seeded per epoch); accelerate's
DataLoader wrapper deals consecutive batches to the ranks, so every batch keeps one modality and the
Trainer's resume (replaying the seeded order and skipping the consumed batches) lands exactly where the
interrupted run stopped.

Stages whose ``objective`` is "gen" read prompt/image pairs instead (``train_stages.gen_data``): every
source is a gen JSON list (format "gen"), concatenated in order; the Trainer's own seeded sampler shuffles.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

from data_pipelines.collate import PackingCollator, PaddingCollator
from data_pipelines.dataset import MultimodalDataset, StreamingMultimodalDataset
from data_pipelines.mixture import MixtureSpec, SourceSpec, load_mixture
from data_pipelines.preflight import preflight
from data_pipelines.records import SkipStats
from data_pipelines.sampler import LengthGroupedSampler

from .gen_data import GenCollator, GenDataset, gen_preflight, read_gen_records
from .specs import TrainConfig

log = logging.getLogger("mllm.train")


@dataclass
class TrainingData:
    dataset: Any
    collator: Any
    sampler: Optional[LengthGroupedSampler]
    skip_stats: SkipStats

    def preflight(self, num_samples: int = 64) -> Dict[str, Any]:
        if isinstance(self.dataset, GenDataset):
            report = gen_preflight(self.dataset, num_samples)
            log.info("preflight over the first gen samples: %s", report)
            return report
        indices = list(iter(self.sampler))[:num_samples] if self.sampler is not None else None
        report = preflight(self.dataset, indices=indices, num_samples=num_samples)
        log.info("preflight over the first %d samples: %s", report["checked"], report)
        return report

    def stats(self) -> Dict[str, Any]:
        return self.skip_stats.as_dict()


def build_training_data(cfg: TrainConfig, model) -> TrainingData:
    if not cfg.data and not cfg.mixture:
        raise ValueError(f"stage {cfg.stage!r}: 'data' lists no sources (and no 'mixture' YAML is given)")
    if cfg.spec.objective == "gen":
        return build_gen_data(cfg, model)
    bad = [s.path for s in cfg.data if s.format == "gen"]
    if bad:
        raise ValueError(f"stage {cfg.stage!r} trains on conversations, but data source(s) {bad} have format "
                         f"'gen' (prompt/image pairs are for the 'gen' stage)")
    spec = stage_mixture(cfg)
    stats = SkipStats()
    max_length = cfg.max_length or model.config.max_length
    template = cfg.resolved_template(model.config.chat_template)
    if cfg.streaming:
        if cfg.max_steps <= 0:
            raise ValueError(f"stage {cfg.stage!r}: streaming data has no length; set max_steps")
        # rank 0 reads the stream and accelerate dispatches the batches to the ranks
        dataset = StreamingMultimodalDataset.for_model(spec.stream, model, max_length=max_length,
                                                       template=template, strict=cfg.strict_data, stats=stats)
    else:
        records = load_mixture(spec, stats=stats, strict=cfg.strict_data)
        dataset = MultimodalDataset.for_model(records, model, max_length=max_length, template=template,
                                              strict=cfg.strict_data, stats=stats)
    pad = model.tokenizer.pad_token_id
    if cfg.packing:
        collator = PackingCollator(max_length=max_length, pad_token_id=pad, report_skips=True)
    else:
        collator = PaddingCollator(pad_token_id=pad, report_skips=True)
    sampler = None if cfg.streaming else LengthGroupedSampler(
        dataset.lengths, dataset.modalities, batch_size=cfg.per_device_train_batch_size, seed=cfg.seed,
        group_by_modality=cfg.group_by_modality_length)
    if stats.as_dict().get("total"):
        stats.log(log)
    return TrainingData(dataset=dataset, collator=collator, sampler=sampler, skip_stats=stats)


def stage_mixture(cfg: TrainConfig) -> MixtureSpec:
    """The stage's sources as one mixture: ``mixture`` (a mixture YAML) and/or ``data``. Defaults are the
    mixture's own: format "auto" (detected per file) and, without weights, every record once."""
    sources = []
    seed, num_samples = cfg.seed, cfg.num_samples
    if cfg.mixture:
        spec = MixtureSpec.from_yaml(cfg.mixture)
        sources += spec.sources
        num_samples = num_samples if num_samples is not None else spec.num_samples
    sources += [SourceSpec(path=s.path, format=s.format or "auto", image_root=s.image_root, weight=s.weight,
                           max_samples=s.max_samples, split=s.split, image_placement=s.image_placement)
                for s in cfg.data]
    try:
        return MixtureSpec(sources=sources, seed=seed, num_samples=num_samples)
    except ValueError as e:
        raise ValueError(f"stage {cfg.stage!r} data: {e}") from None


def build_gen_data(cfg: TrainConfig, model) -> TrainingData:
    if model.gen_head is None:
        raise ValueError(f"stage {cfg.stage!r} trains the image-generation head, but the model has none")
    stats = SkipStats()
    records = []
    for s in cfg.data:
        if (s.format or "gen") != "gen":
            raise ValueError(f"stage {cfg.stage!r} reads prompt/image pairs (format 'gen'); data source {s.path!r} "
                             f"has format {s.format!r}")
        records += read_gen_records(s.path, strict=cfg.strict_data, stats=stats, max_samples=s.max_samples)
    dataset = GenDataset(records, model.tokenizer, model.gen_head.config.image_size, strict=cfg.strict_data,
                         stats=stats)
    if stats.total:
        stats.log(log)
    return TrainingData(dataset=dataset, collator=GenCollator(model.tokenizer.pad_token_id, report_skips=True),
                        sampler=None, skip_stats=stats)
