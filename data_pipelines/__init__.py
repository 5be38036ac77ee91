"""Data for mllm: formats -> records -> chat template + tokens -> samples -> batches.

    from data_pipelines import (load_records, MultimodalDataset, LengthGroupedSampler, PaddingCollator,
                                preflight, SkipStats)
    stats = SkipStats()
    records = load_records("data/shapes/instruct_train.json", stats=stats)   # llava / sharegpt / hf, auto
    ds = MultimodalDataset.for_model(records, model, stats=stats)             # lazy images, AnyRes, labels
    sampler = LengthGroupedSampler(ds.lengths, ds.modalities, batch_size=8, seed=0)
    preflight(ds, indices=sampler.rank_indices()[:64])                      # tokenisation / label checks
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=2,
                        collate_fn=PaddingCollator(model.tokenizer.pad_token_id))
    ...; stats.log(); metrics["data_skipped"] = stats.as_dict()

Modules: ``processor`` (``MultimodalProcessor``: the one object between a conversation and model inputs,
for training, chat, eval and export alike), ``records`` (Record, SkipStats, RecordError), ``formats`` (llava,
sharegpt, hf readers), ``mixture`` (weighted sources from YAML), ``templates`` (plain, vicuna_v1, llama3,
chatml), ``tokenize`` (segment-wise tokenisation, label masking, image expansion, truncation), ``dataset``
(map-style and streaming datasets), ``collate`` (padding and packing), ``sampler`` (length/modality grouped,
resumable), ``preflight``; ``images`` / ``image_processor`` (loading, AnyRes tiles); ``mmbench`` (the MMBench prompt and
answer matching, shared with ``eval``); ``shapes`` (the Shapes world).
Names below are imported lazily, so ``import data_pipelines`` stays cheap.
"""
from __future__ import annotations

_LAZY = {
    "Record": "data_pipelines.records", "Origin": "data_pipelines.records", "RecordError": "data_pipelines.records",
    "SkipStats": "data_pipelines.records", "SKIP_REASONS": "data_pipelines.records",
    "load_records": "data_pipelines.formats", "read_records": "data_pipelines.formats",
    "detect_format": "data_pipelines.formats", "FORMATS": "data_pipelines.formats",
    "MixtureSpec": "data_pipelines.mixture", "SourceSpec": "data_pipelines.mixture",
    "load_mixture": "data_pipelines.mixture",
    "get_template": "data_pipelines.templates", "TEMPLATES": "data_pipelines.templates",
    "ChatTemplate": "data_pipelines.templates",
    "encode_conversation": "data_pipelines.tokenize", "IGNORE_INDEX": "data_pipelines.tokenize",
    "TokenizationMismatch": "data_pipelines.tokenize", "AllMaskedError": "data_pipelines.tokenize",
    "MultimodalDataset": "data_pipelines.dataset",
    "StreamingMultimodalDataset": "data_pipelines.dataset", "stream_source": "data_pipelines.dataset",
    "PaddingCollator": "data_pipelines.collate", "PackingCollator": "data_pipelines.collate",
    "pack_first_fit": "data_pipelines.collate",
    "LengthGroupedSampler": "data_pipelines.sampler",
    "preflight": "data_pipelines.preflight", "PreflightError": "data_pipelines.preflight",
    "load_image": "data_pipelines.images", "ImageLoadError": "data_pipelines.images",
    "AnyResImageProcessor": "data_pipelines.image_processor",
    "MultimodalProcessor": "data_pipelines.processor", "PromptInputs": "data_pipelines.processor",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")


__all__ = sorted(_LAZY)
