"""Encoder pretraining for presets without a pretrained tower (``tiny``): CLIP-style contrastive training,
plus per-patch attribute heads on the scene metadata where the data has it (the Shapes world).

The tower's selected features (the ones the connector will see) are mean-pooled over every AnyRes tile of
an image (``views="tiles"``, the default: the base view and the high-resolution tiles, so the tower learns
what small shapes look like at the scale the LLM will see them) or over the base view only
(``views="base"``), and projected; a small text transformer encodes the captions; open_clip's ``ClipLoss``
pulls matching pairs together.

Attribute heads (``attribute_weight`` > 0 and a ``scenes`` JSONL next to the captions, e.g. the Shapes
world's ``scenes_train.jsonl``): every patch of every tile also predicts, with one linear head each, the
colour, kind and size class of the shape covering it and the text of the label covering it
(``data_pipelines.shapes.patches``, pushed through exactly the processor's tile geometry). Contrastive
captions alone say *what* is in an image but not *where* it is in the patch grid; the heads make each
patch feature carry its own content, which is what the connector and the LLM read. The heads are
training aids only: they are dropped, and the saved checkpoint is a plain preset checkpoint. The
output is a full checkpoint of the preset with the trained tower (connector and LLM still random), ready
to be the ``init_from`` of the align stage.

    python -m train_stages.encoder_pretrain --data shapes/captions_train.json --out runs/encoder --epochs 8
    python -m train_stages.encoder_pretrain --data shapes/captions_train.json --out runs/encoder \
        --attribute-weight 0      # contrastive only
    python -m eval.perceivability --features frozen --tower runs/encoder   # what the features carry
    mllm train --stage encoder --config encoder.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.images import load_image
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.shapes.patches import (HEADS, PatchHeads, cell_assignment, cell_targets, patch_targets,
                                           pool_cells)
from data_pipelines.shapes.scene import Scene
from mllm.config import apply_overrides
from mllm.model import MultimodalLM
from mllm.presets import get_preset

log = logging.getLogger("mllm.train")


@dataclass
class EncoderPretrainConfig:
    data: str  # LLaVA JSON of captions (image + one gpt turn)
    output_dir: str
    model: str = "tiny"
    model_overrides: List[str] = field(default_factory=list)
    image_root: Optional[str] = None
    epochs: int = 8
    # small batches, high lr: the tower learns per optimizer step (1000 images x 6 epochs, 61 s either way:
    # frozen-feature probe 0.49 at batch 16 / lr 6e-3 against 0.40 at batch 64 / lr 2e-3)
    batch_size: int = 16
    learning_rate: float = 6e-3
    weight_decay: float = 0.05
    text_layers: int = 2
    embed_dim: int = 64
    max_text_len: int = 48
    seed: int = 0
    num_threads: Optional[int] = None
    views: str = "tiles"  # "tiles": every AnyRes tile of an image; "base": the whole image at tile size only
    scenes: Optional[str] = None  # scene metadata JSONL; default: scenes_train.jsonl beside the data, if any
    attribute_weight: float = 1.0  # weight of the per-patch attribute heads (0: contrastive only)


class TextEncoder(nn.Module):
    """A small pre-norm transformer over caption tokens; the embedding is the masked mean."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, max_len: int, out_dim: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        nn.init.normal_(self.pos, std=0.01)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos[: ids.shape[1]]  # (B, L, W)
        x = self.encoder(x, src_key_padding_mask=~mask.bool())
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.proj((x * m).sum(1) / m.sum(1).clamp(min=1))  # (B, out_dim)


class ImageHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, feats: torch.Tensor, owner: Optional[torch.Tensor] = None, n: int = 0) -> torch.Tensor:
        pooled = feats.mean(1)  # (tiles, T, C) -> (tiles, C)
        if owner is not None:  # average the tiles of each image: (tiles, C) -> (n, C)
            summed = torch.zeros(n, pooled.shape[1], dtype=pooled.dtype).index_add_(0, owner, pooled)
            pooled = summed / torch.bincount(owner, minlength=n).clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return self.proj(self.norm(pooled))  # (n, out_dim)


class TileBank:
    """Every image's tiles in one flat tensor, with offsets: ``batch(idx)`` gives the tiles of those images
    and, per tile, the position of its image in ``idx``."""

    def __init__(self, tiles: List[torch.Tensor]):
        self.flat = torch.cat(tiles)  # (total tiles, 3, S, S)
        counts = torch.tensor([t.shape[0] for t in tiles])
        self.start = torch.cumsum(counts, 0) - counts
        self.count = counts

    def batch(self, idx: torch.Tensor):
        rows = torch.cat([torch.arange(int(self.start[i]), int(self.start[i] + self.count[i])) for i in idx])
        owner = torch.repeat_interleave(torch.arange(len(idx)), self.count[idx])
        return self.flat[rows], owner, rows


def _load_scenes(path: str, pairs, data_path: str):
    """Scene metadata for every caption pair (matched by image path), or an error naming what is missing."""

    root = os.path.dirname(os.path.abspath(data_path))
    by_image = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                scene = Scene.from_dict(json.loads(line), where=f"{path}:{n}")
                by_image[os.path.normpath(os.path.join(root, scene.image))] = scene
    missing = [p for p, _ in pairs if os.path.normpath(p) not in by_image]
    if missing:
        raise ValueError(f"{path}: no scene for {len(missing)} caption image(s), e.g. {missing[0]!r}")
    return [by_image[os.path.normpath(p)] for p, _ in pairs]


def _load_pairs(path: str, image_root: Optional[str]):
    with open(path) as f:
        records = json.load(f)
    root = image_root or os.path.dirname(os.path.abspath(path))
    pairs = []
    for i, rec in enumerate(records):
        img = rec.get("image")
        turns = [t for t in rec.get("conversations", []) if t.get("from") == "gpt"]
        if not isinstance(img, str) or not turns:
            raise ValueError(f"{path}: record {i} (id {rec.get('id')!r}): a caption record needs one 'image' "
                             f"path and a 'gpt' turn")
        pairs.append((os.path.join(root, img), turns[0]["value"]))
    return pairs


def pretrain_encoder(cfg: EncoderPretrainConfig, progress: bool = True) -> dict:
    from open_clip.loss import ClipLoss

    torch.manual_seed(cfg.seed)
    mcfg = apply_overrides(get_preset(cfg.model), cfg.model_overrides)
    model = MultimodalLM.build(mcfg)
    tower, tok = model.vision_tower, model.tokenizer
    if cfg.views not in ("tiles", "base"):
        raise ValueError(f"encoder pretraining: views must be 'tiles' or 'base', got {cfg.views!r}")
    if cfg.views == "tiles":  # exactly the tiles the connector will get
        proc = AnyResImageProcessor.from_config(mcfg)
    else:  # the base tile of the AnyRes processor = the whole image at tile size
        proc = AnyResImageProcessor(tower.image_size, [], mcfg.image.mean, mcfg.image.std)
    pairs = _load_pairs(cfg.data, cfg.image_root)
    t0 = time.time()
    scenes_path = cfg.scenes
    if scenes_path is None and cfg.attribute_weight > 0:
        guess = os.path.join(os.path.dirname(os.path.abspath(cfg.data)), "scenes_train.jsonl")
        scenes_path = guess if os.path.exists(guess) else None
    attributes = cfg.attribute_weight > 0 and scenes_path is not None
    tiles_of = lambda p: proc.process(load_image(p))[0] if cfg.views == "tiles" else proc.process(load_image(p))[0][:1]  # noqa: E731
    bank = TileBank([tiles_of(p) for p, _ in tqdm(pairs, desc="encoder pretrain: tiles", disable=not progress)])
    patch_heads, targets = None, None
    if attributes:

        scenes = _load_scenes(scenes_path, pairs, cfg.data)
        patch = mcfg.vision.config.get("patch_size", 8)
        keep = None if cfg.views == "tiles" else 1
        per_scene = [patch_targets(sc, proc, patch) for sc in scenes]
        targets = {k: torch.cat([t[k][:keep] for t in per_scene]) for k in HEADS}  # {target: (tiles, G*G)}
        if targets["colour"].shape[0] != bank.flat.shape[0]:
            raise ValueError(f"encoder pretraining: {targets['colour'].shape[0]} tiles of patch targets but "
                             f"{bank.flat.shape[0]} image tiles (scenes do not match the images?)")
        cells = [cell_targets(sc) for sc in scenes]
        cell_count = torch.tensor([len(c["colour"]) for c in cells])
        cell_start = torch.cumsum(cell_count, 0) - cell_count
        cell_y = {k: torch.cat([c[k] for c in cells]) for k in HEADS}  # {target: (all cells,)}
        cell_ids = torch.cat([cell_assignment(sc, proc, patch)[:keep] for sc in scenes])  # (tiles, G*G) local
        dim = tower.hidden_size * max(1, len(getattr(tower, "feature_layers", [0])))
        patch_heads, cell_heads = PatchHeads(dim), PatchHeads(2 * dim)

        def attribute_loss(feats: torch.Tensor, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            # per patch: what covers it; per cell of the layout: what is in it, from the mean of its
            # patches (a patch inside a large shape sees flat colour only; the cell sees the outline)
            owner = torch.repeat_interleave(torch.arange(len(idx)), bank.count[idx])  # (tiles,)
            n = cell_count[idx]
            offset = (torch.cumsum(n, 0) - n)[owner].unsqueeze(1)  # (tiles, 1)
            local = cell_ids[rows]
            ids = torch.where(local >= 0, local + 2 * offset, -1)
            picked = torch.cat([torch.arange(int(cell_start[i]), int(cell_start[i] + cell_count[i])) for i in idx])
            pooled = pool_cells(feats, ids, int(n.sum()))  # (cells, 2C)
            return (patch_heads.loss(feats, {k: v[rows] for k, v in targets.items()})
                    + cell_heads.loss(pooled, {k: v[picked] for k, v in cell_y.items()}))

    def embed_images(idx: torch.Tensor):
        tiles, owner, rows = bank.batch(idx)
        feats = tower(tiles)  # (tiles, G*G, C): the features the connector will see
        return nn.functional.normalize(head(feats, owner, len(idx)), dim=-1), feats, rows
    enc = [tok.encode(c, add_special_tokens=False)[: cfg.max_text_len - 1] + [tok.eos_token_id] for _, c in pairs]
    ids = torch.full((len(enc), cfg.max_text_len), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    text = TextEncoder(len(tok), tower.hidden_size, cfg.text_layers, 4, cfg.max_text_len, cfg.embed_dim)
    head = ImageHead(tower.hidden_size, cfg.embed_dim)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(tower.parameters()) + list(text.parameters()) + list(head.parameters()) + [logit_scale]
    if patch_heads is not None:
        params += list(patch_heads.parameters()) + list(cell_heads.parameters())
    for p in tower.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(pairs) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=total, pct_start=0.1)
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(total=total, desc="encoder pretrain", disable=not progress)
    t_train = time.time()
    tower.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=g)
        running = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            img, feats, rows = embed_images(idx)
            txt = nn.functional.normalize(text(ids[idx], mask[idx]), dim=-1)
            loss = loss_fn(img, txt, logit_scale.exp().clamp(max=100))
            if patch_heads is not None:
                loss = loss + cfg.attribute_weight * attribute_loss(feats, rows, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        history.append(running / steps_per_epoch)
    bar.close()
    # retrieval accuracy on the training pairs (a sanity figure, image -> caption top-1 in batches of 64)
    tower.eval()
    with torch.no_grad():
        hits = n = 0
        for s in range(0, len(pairs) - 63, 64):
            img = embed_images(torch.arange(s, s + 64))[0]
            txt = nn.functional.normalize(text(ids[s:s + 64], mask[s:s + 64]), dim=-1)
            hits += int((img @ txt.T).argmax(1).eq(torch.arange(64)).sum())
            n += 64
    os.makedirs(cfg.output_dir, exist_ok=True)
    model.save_pretrained(cfg.output_dir)
    MultimodalProcessor.for_model(model).save_pretrained(cfg.output_dir)
    summary = {"stage": "encoder", "epochs": cfg.epochs, "steps": total, "loss_first_epoch": history[0],
               "loss_last_epoch": history[-1], "retrieval_top1_in_64": hits / max(n, 1),
               "seconds": round(time.time() - t0, 1), "pairs": len(pairs), "views": cfg.views,
               "tiles": int(bank.flat.shape[0]), "attribute_heads": attributes,
               "seconds_per_step": round((time.time() - t_train) / max(total, 1), 3)}
    with open(os.path.join(cfg.output_dir, "encoder_pretrain.json"), "w") as f:
        json.dump({"config": cfg.__dict__, "summary": summary, "loss_per_epoch": history}, f, indent=2)
    log.info("encoder pretraining: %s", summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--image-root")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", choices=("tiles", "base"), default="tiles",
                   help="pool every AnyRes tile of an image (default) or the base view only")
    p.add_argument("--scenes", help="scene metadata JSONL for the attribute heads "
                                    "(default: scenes_train.jsonl beside --data, if present)")
    p.add_argument("--attribute-weight", type=float, default=1.0,
                   help="weight of the per-patch attribute heads; 0 = contrastive only")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(pretrain_encoder(EncoderPretrainConfig(
        data=a.data, output_dir=a.out, model=a.model, image_root=a.image_root, epochs=a.epochs,
        batch_size=a.batch_size, learning_rate=a.lr, seed=a.seed, views=a.views, scenes=a.scenes,
        attribute_weight=a.attribute_weight)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
