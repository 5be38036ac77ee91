"""open_clip towers -> transformers' CLIP / SigLIP vision layout, where the architectures really match.

    conv = convert_open_clip_tower(tower)     # tower: mllm.vision.open_clip_tower.OpenCLIPVisionTower
    conv.vision_config                        # {"model_type": "clip_vision_model", "hidden_size": ..., ...}
    conv.state_dict                           # keys of CLIPVisionModel in the 4.x layout ("vision_model.*")
    # raises NotConvertible(reason) when no transformers model computes the same features

Two mappings are known:
  open_clip's own ViT (``ViT-B-16``, ``ViT-L-14``, ...)  ->  CLIPVisionModel
      class_embedding, positional_embedding, conv1 -> embeddings.*; ln_pre -> pre_layrnorm;
      resblocks.i: ln_1/ln_2 -> layer_norm1/2, attn.in_proj split into q/k/v_proj, attn.out_proj -> out_proj,
      mlp.c_fc/c_proj -> mlp.fc1/fc2; GELU -> "gelu", QuickGELU -> "quick_gelu".
  a timm ViT trunk without class/register tokens (``ViT-B-16-SigLIP``, ...)  ->  SiglipVisionModel
      patch_embed.proj -> patch_embedding, pos_embed -> position_embedding, blocks.i: norm1/norm2 ->
      layer_norm1/2, attn.qkv split into q/k/v_proj, attn.proj -> out_proj, mlp.fc1/fc2; timm's exact GELU
      -> "gelu" (not SigLIP's usual tanh approximation, which would change the numbers).
Anything else (layer scale, no ln_pre, qk-norm, cosine attention, register tokens, SwiGLU MLPs, ...) raises
``NotConvertible`` naming the feature; the exporter then takes the remote-code path. Every conversion is
also checked numerically: the transformers model built from the result must reproduce the tower's
features (max abs diff <= 1e-5) before it is accepted.

Only the blocks the tower kept (up to its deepest feature layer) are converted; ``feature_layers`` are the
tower's hidden-state indices, valid for the converted model as they are.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import nn

NUMERIC_TOLERANCE = 1e-5


class NotConvertible(ValueError):
    """The tower has no exact transformers counterpart; the message says why."""


@dataclass
class ConvertedTower:
    vision_config: Dict[str, Any]     # HF vision config kwargs, with "model_type"
    state_dict: Dict[str, torch.Tensor]  # HF vision model keys, 4.x layout ("vision_model.<...>")
    feature_layers: List[int]         # non-negative hidden-state indices
    num_layers: int                   # encoder layers in the converted model


def convert_open_clip_tower(tower) -> ConvertedTower:
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = tower.visual
    if isinstance(visual, VisionTransformer):
        conv = _convert_open_clip_vit(tower, visual)
    elif isinstance(visual, TimmModel):
        conv = _convert_timm_vit(tower, visual.trunk)
    else:  # the tower itself only accepts these two
        raise NotConvertible(f"open_clip vision tower {type(visual).__name__} has no transformers counterpart")
    check_numerically(tower, conv)
    return conv


# ---- open_clip's own ViT -> CLIPVisionModel ---------------------------------------------------------------------
def _convert_open_clip_vit(tower, visual) -> ConvertedTower:
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    name = tower.arch_config().get("model_name")
    where = f"open_clip model {name!r}"
    if not isinstance(visual.ln_pre, nn.LayerNorm):
        raise NotConvertible(f"{where} has no ln_pre (no_ln_pre=True); CLIP always normalises before its encoder")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise NotConvertible(f"{where} uses patch dropout")
    blocks = list(visual.transformer.resblocks)
    width = visual.transformer.width
    eps = visual.ln_pre.eps
    acts = set()
    for i, b in enumerate(blocks):
        bw = f"{where} block {i}"
        if type(b) is not ResidualAttentionBlock:
            raise NotConvertible(f"{bw} is a {type(b).__name__} (scaled cosine attention / head scaling / "
                                 f"extra norms); CLIPEncoderLayer has none of these")
        if not (isinstance(b.ls_1, nn.Identity) and isinstance(b.ls_2, nn.Identity)):
            raise NotConvertible(f"{bw} uses layer scale (ls_init_value); CLIPEncoderLayer has none")
        if hasattr(b, "ln_1_kv"):
            raise NotConvertible(f"{bw} is a cross-attention block")
        attn = b.attn
        if attn.in_proj_weight is None or attn.in_proj_bias is None or attn.bias_k is not None:
            raise NotConvertible(f"{bw}: attention without a fused biased in-projection, or with bias_kv")
        for ln in (b.ln_1, b.ln_2):
            if not isinstance(ln, nn.LayerNorm) or ln.eps != eps or ln.weight is None or ln.bias is None:
                raise NotConvertible(f"{bw}: norms must be affine LayerNorms with one eps ({eps})")
        act = b.mlp.gelu
        if isinstance(act, QuickGELU):
            acts.add("quick_gelu")
        elif isinstance(act, nn.GELU) and act.approximate == "none":
            acts.add("gelu")
        elif isinstance(act, nn.GELU) and act.approximate == "tanh":
            acts.add("gelu_pytorch_tanh")
        else:
            raise NotConvertible(f"{bw}: activation {type(act).__name__} has no transformers equivalent")
    if len(acts) > 1:
        raise NotConvertible(f"{where} mixes activations {sorted(acts)}")
    heads = blocks[0].attn.num_heads if blocks else max(1, width // 64)
    inter = blocks[0].mlp.c_fc.out_features if blocks else 4 * width
    config = dict(model_type="clip_vision_model", hidden_size=width, intermediate_size=inter,
                  num_hidden_layers=len(blocks), num_attention_heads=heads, num_channels=3,
                  image_size=tower.image_size, patch_size=tower.patch_size,
                  hidden_act=acts.pop() if acts else "gelu",  # no blocks kept: the activation is never used
                  layer_norm_eps=eps, attention_dropout=0.0)
    pos = visual.positional_embedding.detach()
    if pos.shape[0] != tower.grid_size ** 2 + 1:
        raise NotConvertible(f"{where}: {pos.shape[0]} position embeddings for a {tower.grid_size}^2 grid + CLS")
    p = "vision_model."
    sd = {p + "embeddings.class_embedding": visual.class_embedding.detach(),
          p + "embeddings.patch_embedding.weight": visual.conv1.weight.detach(),
          p + "embeddings.position_embedding.weight": pos,
          p + "pre_layrnorm.weight": visual.ln_pre.weight.detach(),
          p + "pre_layrnorm.bias": visual.ln_pre.bias.detach()}
    for i, b in enumerate(blocks):
        q = f"{p}encoder.layers.{i}."
        for src, dst in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
            mod = b.get_submodule(src)
            sd[q + dst + ".weight"] = mod.weight.detach()
            sd[q + dst + ".bias"] = mod.bias.detach()
        _split_qkv(sd, q + "self_attn.", b.attn.in_proj_weight.detach(), b.attn.in_proj_bias.detach())
    sd.update(identity_layernorm(p + "post_layernorm", width))
    return ConvertedTower(config, sd, list(tower.feature_layers), len(blocks))


# ---- timm ViT trunk (SigLIP-style, no prefix tokens) -> SiglipVisionModel -------------------------------------
def _convert_timm_vit(tower, trunk) -> ConvertedTower:
    from timm.layers import Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    name = tower.arch_config().get("model_name")
    where = f"open_clip model {name!r} (timm trunk)"
    if trunk.num_prefix_tokens:
        raise NotConvertible(f"{where} has {trunk.num_prefix_tokens} class/register token(s); SiglipVisionModel has "
                             f"none, and CLIPVisionModel has no patch-embedding bias or register tokens")
    if getattr(trunk, "dynamic_img_size", False):
        raise NotConvertible(f"{where} resamples position embeddings on the fly (dynamic_img_size)")
    if trunk.pos_embed is None:
        raise NotConvertible(f"{where} has no learned absolute position embedding")
    if not isinstance(trunk.norm_pre, nn.Identity):
        raise NotConvertible(f"{where} normalises before its blocks (norm_pre); SiglipVisionModel does not")
    pe = trunk.patch_embed
    if not isinstance(pe.norm, nn.Identity) or pe.proj.bias is None or not isinstance(pe.proj, nn.Conv2d):
        raise NotConvertible(f"{where}: the patch embedding must be a biased Conv2d without a norm")
    blocks = list(trunk.blocks)
    width = trunk.embed_dim
    eps = None
    acts = set()
    for i, b in enumerate(blocks):
        bw = f"{where} block {i}"
        if type(b) is not Block or type(b.attn) is not Attention or type(b.mlp) is not Mlp:
            raise NotConvertible(f"{bw} is {type(b).__name__}/{type(b.attn).__name__}/{type(b.mlp).__name__}; "
                                 f"only plain Block/Attention/Mlp map onto SiglipEncoderLayer")
        if not (isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity)):
            raise NotConvertible(f"{bw} uses layer scale; SiglipEncoderLayer has none")
        for part in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(b.attn, part, nn.Identity()), nn.Identity):
                raise NotConvertible(f"{bw}: attention has {part}; SiglipAttention has none")
        if b.attn.qkv.bias is None:
            raise NotConvertible(f"{bw}: qkv without bias")
        if abs(b.attn.scale - b.attn.head_dim ** -0.5) > 1e-12:
            raise NotConvertible(f"{bw}: attention scale {b.attn.scale} is not head_dim**-0.5")
        if not isinstance(b.mlp.norm, nn.Identity) or b.mlp.fc1.bias is None:
            raise NotConvertible(f"{bw}: the MLP has a norm or no bias")
        for ln in (b.norm1, b.norm2):
            if not isinstance(ln, nn.LayerNorm):
                raise NotConvertible(f"{bw}: norms must be LayerNorm, got {type(ln).__name__}")
            eps = ln.eps if eps is None else eps
            if ln.eps != eps:
                raise NotConvertible(f"{bw}: norms use different eps")
        act = b.mlp.act
        if isinstance(act, nn.GELU):
            acts.add("gelu" if act.approximate == "none" else "gelu_pytorch_tanh")
        else:
            raise NotConvertible(f"{bw}: activation {type(act).__name__} has no transformers equivalent here")
    if len(acts) > 1:
        raise NotConvertible(f"{where} mixes activations {sorted(acts)}")
    pos = trunk.pos_embed.detach()[0]  # (grid**2, C)
    if pos.shape[0] != tower.grid_size ** 2:
        raise NotConvertible(f"{where}: {pos.shape[0]} position embeddings for a {tower.grid_size}^2 grid")
    heads = blocks[0].attn.num_heads if blocks else 1
    inter = blocks[0].mlp.fc1.out_features if blocks else 4 * width
    config = dict(model_type="siglip_vision_model", hidden_size=width, intermediate_size=inter,
                  num_hidden_layers=len(blocks), num_attention_heads=heads, num_channels=3,
                  image_size=tower.image_size, patch_size=tower.patch_size,
                  hidden_act=acts.pop() if acts else "gelu", layer_norm_eps=eps if eps is not None else 1e-6,
                  attention_dropout=0.0, vision_use_head=False)
    p = "vision_model."
    sd = {p + "embeddings.patch_embedding.weight": pe.proj.weight.detach(),
          p + "embeddings.patch_embedding.bias": pe.proj.bias.detach(),
          p + "embeddings.position_embedding.weight": pos}
    for i, b in enumerate(blocks):
        q = f"{p}encoder.layers.{i}."
        for src, dst in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2"), ("attn.proj", "self_attn.out_proj")):
            mod = b.get_submodule(src)
            sd[q + dst + ".weight"] = mod.weight.detach()
            sd[q + dst + ".bias"] = mod.bias.detach()
        _split_qkv(sd, q + "self_attn.", b.attn.qkv.weight.detach(), b.attn.qkv.bias.detach())
    sd.update(identity_layernorm(p + "post_layernorm", width))
    return ConvertedTower(config, sd, list(tower.feature_layers), len(blocks))


# ---- helpers -----------------------------------------------------------------------------------------------------
def _split_qkv(sd: Dict[str, torch.Tensor], prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    # fused (3C, C) in q, k, v order -> three (C, C) projections
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), bias.chunk(3, dim=0)):
        sd[f"{prefix}{name}.weight"] = w.contiguous()
        sd[f"{prefix}{name}.bias"] = b.contiguous()


def identity_layernorm(prefix: str, width: int) -> Dict[str, torch.Tensor]:
    """Weights for a final norm the features never pass through (the tower pruned it): written so the HF
    model loads without "newly initialised" weights; it only affects the pooled output, never the features."""
    return {prefix + ".weight": torch.ones(width), prefix + ".bias": torch.zeros(width)}


def build_hf_vision_model(conv: ConvertedTower):
    """The transformers vision model described by ``conv``, with its weights (in this transformers version)."""
    from transformers import AutoConfig, AutoModel

    kwargs = dict(conv.vision_config)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    model = AutoModel.from_config(config).eval()
    own = model.state_dict()
    state = {}
    for k, v in conv.state_dict.items():
        key = k if k in own else k[len("vision_model."):]  # 5.x keeps the vision model flat
        state[key] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise NotConvertible(f"converted weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model


@torch.no_grad()
def check_numerically(tower, conv: ConvertedTower) -> float:
    """Run the tower and the converted HF model on the same random tiles; raise unless they agree."""
    hf = build_hf_vision_model(conv)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, tower.image_size, tower.image_size, generator=g)
    # compared in float32 on an eval copy: dropout off, and no bf16 rounding hiding or faking a mismatch
    ref = copy.deepcopy(tower).float().eval()
    ours = ref(x)
    del ref
    states = hf.to(torch.float32)(x, output_hidden_states=True).hidden_states
    theirs = torch.cat([states[k] for k in conv.feature_layers], dim=-1)
    if tower.has_cls and tower.select_strategy == "default":
        theirs = theirs[:, 1:]
    if ours.shape != theirs.shape:
        raise NotConvertible(f"converted tower gives features of shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    if diff > NUMERIC_TOLERANCE:
        raise NotConvertible(f"converted tower's features differ from the open_clip tower's by {diff:.2e} "
                             f"(> {NUMERIC_TOLERANCE:g})")
    return diff
