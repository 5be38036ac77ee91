"""open_clip vision towers ("open_clip"): its own ViTs (e.g. "ViT-B-16") and timm trunks (e.g. "ViT-B-16-SigLIP").

    from mllm.config import VisionConfig
    from mllm.vision import build_vision_tower
    tower = build_vision_tower(VisionConfig(kind="open_clip", name_or_path="/ckpt/open_clip_model.safetensors",
                                            config={"model_name": "ViT-B-16-SigLIP"}, select_strategy="full"))
    tiny = build_vision_tower(VisionConfig(kind="open_clip", config={
        "model_name": "ViT-B-16",
        "vision_cfg": {"width": 32, "layers": 2, "head_width": 16, "patch_size": 8, "image_size": 32}}))

``config`` keys (nothing is downloaded; the model is built from open_clip's built-in config, overridden):
  model_name        a built-in open_clip model name (``open_clip.list_models()``); required
  vision_cfg        dict merged over the model's ``vision_cfg`` (open_clip ``CLIPVisionCfg`` fields)
  timm_model_args   kwargs for the timm trunk (e.g. embed_dim, depth, num_heads, patch_size, img_size), for
                    models whose vision_cfg names a ``timm_model_name``; open_clip itself cannot pass them,
                    so the trunk is created through timm's ``local-dir:`` config mechanism
  text_cfg          dict merged over ``text_cfg``; only used to match a full checkpoint file (the text
                    tower is discarded: random-init builds use a minimal one)
  embed_dim, quick_gelu   top-level model config overrides (quick_gelu changes the ViT's activation)
  pretrained_tag    which pretrained tag's normalisation to use, when the model's tags disagree
  image_mean, image_std   explicit normalisation (wins over the tag's)

``name_or_path`` is a local checkpoint *file* of the whole open_clip model (safetensors preferred; other
formats go through open_clip's loader with ``weights_only=True``), loaded strictly by open_clip.

Features follow the HF convention: hidden state 0 = tokens entering the first block (after ln_pre /
norm_pre), k = output of block k, -1 = the last block, never ln_post or pooling. Blocks past the
deepest selected one, the final norm, pooling and projection are pruned with open_clip's / timm's
``prune_intermediate_layers``; features come from their ``forward_intermediates``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from ..config import VisionConfig
from .base import VisionTower, check_select_strategy, jsonable as _jsonable, resolve_feature_layers

_CONFIG_KEYS = ("model_name", "vision_cfg", "timm_model_args", "text_cfg", "embed_dim", "quick_gelu",
                "pretrained_tag", "image_mean", "image_std")
# the text tower is thrown away; when nothing has to load into it, build the smallest one
_MINIMAL_TEXT_CFG = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}


class OpenCLIPVisionTower(VisionTower):
    """``model.visual`` of an open_clip model (own ViT or timm ViT trunk), pruned to the selected blocks."""

    def __init__(self, visual: nn.Module, arch: Dict[str, Any], feature_layer, select_strategy: str):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer as TimmViT
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        self._arch = copy.deepcopy(arch)
        name = arch["model_name"]
        if isinstance(visual, TimmModel):
            trunk = visual.trunk
            if not isinstance(trunk, TimmViT):
                raise ValueError(f"open_clip model {name!r}: timm trunk {type(trunk).__name__} is not a timm "
                                 f"VisionTransformer; only ViT towers are supported")
            blocks, width = trunk.blocks, trunk.embed_dim
            self.num_prefix_tokens = trunk.num_prefix_tokens
            grid_in, patch = trunk.patch_embed.img_size, trunk.patch_embed.patch_size
            if tuple(visual.image_size) != tuple(grid_in):
                raise ValueError(f"open_clip model {name!r}: vision_cfg.image_size={tuple(visual.image_size)} but "
                                 f"the timm trunk takes {tuple(grid_in)}; set timm_model_args.img_size to match")
        elif isinstance(visual, VisionTransformer):
            blocks, width = visual.transformer.resblocks, visual.transformer.width
            self.num_prefix_tokens = 1  # open_clip's ViT always prepends its class token
            grid_in, patch = visual.image_size, visual.patch_size
        else:
            raise ValueError(f"open_clip model {name!r}: vision tower {type(visual).__name__} is not a ViT; "
                             f"only ViT towers (open_clip VisionTransformer or a timm ViT trunk) are supported")
        if grid_in[0] != grid_in[1] or patch[0] != patch[1]:
            raise ValueError(f"open_clip model {name!r}: only square tiles and patches are supported, got image "
                             f"{tuple(grid_in)} and patch {tuple(patch)}")
        self.image_size, self.patch_size = int(grid_in[0]), int(patch[0])
        self.has_cls = self.num_prefix_tokens > 0
        check_select_strategy(select_strategy, self.has_cls, f"open_clip model {name!r}")
        if select_strategy == "full" and self.num_prefix_tokens > 1:
            raise ValueError(f"open_clip model {name!r} has {self.num_prefix_tokens} prefix tokens (CLS + "
                             f"registers); select_strategy 'full' supports at most one. Use 'default'.")
        self.select_strategy = select_strategy
        self.feature_layers = resolve_feature_layers(feature_layer, len(blocks))
        self.hidden_size = width * len(self.feature_layers)
        self.image_mean = tuple(float(v) for v in visual.image_mean)
        self.image_std = tuple(float(v) for v in visual.image_std)

        # hidden state k (k >= 1) is the output of block k - 1
        self._block_ids = sorted({k - 1 for k in self.feature_layers if k > 0})
        last = self._block_ids[-1] if self._block_ids else 0
        if isinstance(visual, TimmModel):
            visual.trunk.prune_intermediate_layers([last], prune_norm=True, prune_head=True)
            visual.head = nn.Identity()  # open_clip's projection after the trunk
            if not self._block_ids:
                visual.trunk.blocks = visual.trunk.blocks[:0]
        else:
            visual.prune_intermediate_layers([last], prune_norm=True, prune_head=True)
            visual.attn_pool = None  # CoCa-style attentional poolers sit after the last block
            if getattr(visual, "attn_pool_contrastive", None) is not None:
                visual.attn_pool_contrastive = None
            if not self._block_ids:
                visual.transformer.resblocks = visual.transformer.resblocks[:0]
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.dtype)
        p = self.num_prefix_tokens
        states: Dict[int, torch.Tensor] = {}
        if 0 in self.feature_layers:
            states[0] = self._embed(x)  # (N, p + grid**2, C)
        if self._block_ids:
            out = self.visual.forward_intermediates(
                x, indices=self._block_ids, stop_early=True, intermediates_only=True, output_fmt="NLC",
                output_extra_tokens=p > 0)
            patches = out["image_intermediates"]  # [(N, grid**2, C)] in block order
            prefix = out.get("image_intermediates_prefix") or [None] * len(patches)  # [(N, p, C)]
            for b, tokens, pre in zip(self._block_ids, patches, prefix):
                states[b + 1] = tokens if pre is None else torch.cat([pre, tokens], dim=1)  # (N, p + grid**2, C)
        feats = torch.cat([states[k] for k in self.feature_layers], dim=-1)  # (N, p + grid**2, C * n_layers)
        if p and self.select_strategy == "default":
            feats = feats[:, p:]  # (N, grid**2, C * n_layers)
        return feats

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block: patch embedding + prefix + positions + pre-norm. (N, T, C)"""
        from open_clip.timm_model import TimmModel

        if isinstance(self.visual, TimmModel):
            t = self.visual.trunk  # the same steps as timm's forward_intermediates before its blocks
            return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x))))
        return self.visual._embeds(x)

    def arch_config(self) -> Dict[str, Any]:
        return dict(copy.deepcopy(self._arch), image_mean=list(self.image_mean), image_std=list(self.image_std))

    def gradient_checkpointing_enable(self) -> None:
        self.visual.set_grad_checkpointing(True)


def build_open_clip(cfg: VisionConfig) -> OpenCLIPVisionTower:
    import open_clip
    from open_clip.factory import get_model_config
    from open_clip.model import CLIPVisionCfg

    conf = dict(cfg.config or {})
    unknown = sorted(set(conf) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"vision.config: unknown open_clip key(s) {unknown}; known: {', '.join(_CONFIG_KEYS)}")
    name = conf.get("model_name")
    if not isinstance(name, str) or not name:
        raise ValueError("vision.config.model_name is required for kind 'open_clip' (e.g. 'ViT-B-16')")
    if ":" in name:
        raise ValueError(f"vision.config.model_name {name!r}: use a built-in open_clip name and put the weights "
                         f"file in vision.name_or_path (hub / local-dir schemas are not used)")
    base = get_model_config(name)
    if base is None:
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
        raise ValueError(f"vision.config.model_name {name!r} is not an open_clip model; close: {close} "
                         f"(all: open_clip.list_models())")

    vision_over = _mapping(conf, "vision_cfg")
    vision_cfg = dict(base["vision_cfg"], **vision_over)
    fields = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    bad = sorted(set(vision_cfg) - fields)
    if bad:
        raise ValueError(f"vision.config.vision_cfg: unknown open_clip CLIPVisionCfg field(s) {bad}")
    # a VLM needs every patch token: patch dropout would change the token count in training
    vision_cfg["patch_dropout"] = 0.0
    timm_args = _mapping(conf, "timm_model_args")
    if timm_args:
        timm_name = vision_cfg.get("timm_model_name")
        if not timm_name or ":" in timm_name:
            raise ValueError(f"vision.config.timm_model_args given, but model {name!r} has no plain timm trunk "
                             f"(vision_cfg.timm_model_name={timm_name!r})")
        if "img_size" in timm_args and "image_size" not in vision_over:
            vision_cfg["image_size"] = timm_args["img_size"]

    model_kwargs: Dict[str, Any] = {"vision_cfg": vision_cfg}
    for key in ("embed_dim", "quick_gelu"):
        if key in conf:
            model_kwargs[key] = conf[key]
    if cfg.name_or_path is None:
        model_kwargs["text_cfg"] = dict(_MINIMAL_TEXT_CFG)
        if "multimodal_cfg" in base:  # CoCa: its text decoder is discarded too
            model_kwargs["multimodal_cfg"] = dict(base["multimodal_cfg"], **_MINIMAL_TEXT_CFG)
    else:
        if not os.path.isfile(cfg.name_or_path):
            raise ValueError(f"vision.name_or_path {cfg.name_or_path!r}: for kind 'open_clip' this must be a local "
                             f"checkpoint file of the whole open_clip model (.safetensors preferred)")
        model_kwargs["text_cfg"] = dict(base["text_cfg"], **_mapping(conf, "text_cfg"))
    mean, std = _normalisation(name, conf)

    with tempfile.TemporaryDirectory(prefix="mllm_timm_") as tmp:
        if timm_args:
            # timm builds a named architecture with overridden args from a local-dir config.json
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"architecture": vision_cfg["timm_model_name"], "model_args": timm_args,
                           "pretrained_cfg": {}}, f)
            model_kwargs["vision_cfg"] = dict(vision_cfg, timm_model_name=f"local-dir:{tmp}")
        try:
            model = open_clip.create_model(
                name, pretrained=cfg.name_or_path, precision="fp32", device="cpu", weights_only=True,
                pretrained_image=False, pretrained_text=False, force_preprocess_cfg={"mean": mean, "std": std},
                **model_kwargs)
        except (RuntimeError, AssertionError) as e:  # open_clip's strict load / pos-embed resize failures
            src = cfg.name_or_path or "random init"
            raise ValueError(f"vision ({src}): open_clip could not build {name!r}: {e}") from None
    visual = model.visual
    del model  # the text tower and logit scale are not needed

    arch = {"model_name": name, "vision_cfg": _jsonable(vision_cfg)}
    for key in ("embed_dim", "quick_gelu"):
        arch[key] = _jsonable(conf.get(key, base.get(key, False if key == "quick_gelu" else None)))
    if timm_args:
        arch["timm_model_args"] = _jsonable(timm_args)
    return OpenCLIPVisionTower(visual, arch, cfg.feature_layer, cfg.select_strategy)


def _normalisation(name: str, conf: Dict[str, Any]) -> Tuple[List[float], List[float]]:
    """Mean/std the model was trained with: explicit > the named tag > the one all its tags share."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    default = PreprocessCfg()
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag = conf.get("pretrained_tag")
    if tag is not None:
        if tag not in tags:
            raise ValueError(f"vision.config.pretrained_tag {tag!r} is not a tag of {name!r}; known: {tags}")
        tags = [tag]
    norms = set()
    for t in tags:
        pc = open_clip.get_pretrained_cfg(name, t)
        norms.add((tuple(pc.get("mean", default.mean)), tuple(pc.get("std", default.std))))
    if len(norms) > 1 and not ("image_mean" in conf and "image_std" in conf):
        raise ValueError(f"open_clip model {name!r} was trained with different normalisations across its tags "
                         f"{tags}: set vision.config.pretrained_tag or vision.config.image_mean/image_std")
    mean, std = norms.pop() if len(norms) == 1 else (default.mean, default.std)
    mean, std = conf.get("image_mean", mean), conf.get("image_std", std)
    for key, v in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"vision.config.{key} must be 3 numbers (RGB, 0-1 scale), got {v!r}")
    return [float(x) for x in mean], [float(x) for x in std]


def _mapping(conf: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = conf.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"vision.config.{key} must be a mapping, got {type(value).__name__}")
    return dict(value)


__all__ = ["OpenCLIPVisionTower", "build_open_clip"]
