"""Tiny random models from real configs, and batches for them (no network, milliseconds a step)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from mllm.config import AnyResConfig, ConnectorConfig, ImageConfig, LLMConfig, ModelConfig, VisionConfig

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             image_size=32, patch_size=8)
SIGLIP_TOWER = dict(TOWER)
LLM = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=1025, max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
           pad_token_id=3, tie_word_embeddings=True)
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
QFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               cross_attention_frequency=1)


def tiny_config(anyres: bool = True, connector: str = "mlp2x_gelu", tower: str = "hf_clip",
                tie: bool = True, llm_type: str = "llama") -> ModelConfig:
    llm = dict(LLM, tie_word_embeddings=tie, model_type=llm_type)
    strategy = "full" if tower == "hf_siglip" else "default"
    return ModelConfig(
        name="test-tiny",
        vision=VisionConfig(kind=tower, config=dict(TOWER), feature_layer=-2, select_strategy=strategy),
        connector=ConnectorConfig(kind=connector, num_queries=4, qformer=dict(QFORMER)),
        llm=LLMConfig(config=llm, tokenizer="tiny", dtype="float32"),
        anyres=AnyResConfig(enabled=anyres, grid_pinpoints=[list(p) for p in PINPOINTS] if anyres else []),
        image=ImageConfig(size=32),
        chat_template="vicuna_v1",
    )


def make_batch(model, samples: Sequence[Tuple[str, Sequence[Tuple[int, int]]]], pad_left: bool = False,
               seed: int = 0):
    """samples: (text with '<image>' markers, [image (h, w) per marker]) -> model inputs.

    Each '<image>' marker is expanded to the model's token count for that image; pixel values are random
    tiles (the right number per image), which is all the model side needs.
    """
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    rows: List[List[int]] = []
    sizes: List[Tuple[int, int]] = []
    for text, hws in samples:
        parts = text.split("<image>")
        assert len(parts) - 1 == len(hws), "one size per <image> marker"
        ids: List[int] = []
        for i, part in enumerate(parts):
            ids += tok.encode(part, add_special_tokens=False)
            if i < len(hws):
                ids += [model.image_token_id] * model.num_image_tokens(hws[i])
        rows.append(ids)
        sizes += list(hws)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if pad_left else slice(0, len(r))
        input_ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if sizes:
        s = model.geometry.tile_size
        t_max = max(model.geometry.num_tiles(hw) for hw in sizes)
        batch["pixel_values"] = torch.randn(len(sizes), t_max, 3, s, s, generator=g)
        batch["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
    return batch
