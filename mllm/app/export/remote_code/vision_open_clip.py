"""An open_clip vision tower inside an exported mllm model (``vision_backend: "open_clip"``).

Used only when the tower has no exact transformers counterpart (``mllm export`` says why). Needs
``pip install open_clip_torch``. The architecture is rebuilt from ``config.vision_config`` (an open_clip model
name plus overrides) with random weights, pruned after the deepest selected block exactly as mllm prunes it,
and then loaded from the checkpoint. Hidden state 0 = tokens entering the first block, k = output of block k.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List

import torch
from torch import nn

try:  # optional: only exports with an open_clip tower need it
    import open_clip
except ImportError:
    open_clip = None

_MINIMAL_TEXT_CFG = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}


class OpenClipTower(nn.Module):
    def __init__(self, arch: Dict, feature_layers: List[int]):
        super().__init__()
        if open_clip is None:
            raise ImportError("this model's vision tower is an open_clip model: pip install open_clip_torch")
        from open_clip.timm_model import TimmModel

        name = arch["model_name"]
        vision_cfg = dict(arch["vision_cfg"])
        kwargs = {"text_cfg": dict(_MINIMAL_TEXT_CFG)}
        for key in ("embed_dim", "quick_gelu"):
            if arch.get(key) is not None:
                kwargs[key] = arch[key]
        base = open_clip.get_model_config(name) or {}
        if "multimodal_cfg" in base:
            kwargs["multimodal_cfg"] = dict(base["multimodal_cfg"], **_MINIMAL_TEXT_CFG)
        timm_args = arch.get("timm_model_args")
        with tempfile.TemporaryDirectory(prefix="mllm_timm_") as tmp:
            if timm_args:  # timm builds the trunk with overridden args from a local-dir config
                with open(os.path.join(tmp, "config.json"), "w") as f:
                    json.dump({"architecture": vision_cfg["timm_model_name"], "model_args": timm_args,
                               "pretrained_cfg": {}}, f)
                vision_cfg["timm_model_name"] = f"local-dir:{tmp}"
            # the device transformers is building on (its meta device while loading a checkpoint)
            device = torch.empty(0).device
            model = open_clip.create_model(name, pretrained=None, precision="fp32", device=device,
                                           pretrained_image=False, pretrained_text=False, vision_cfg=vision_cfg,
                                           **kwargs)
        visual = model.visual
        self.is_timm = isinstance(visual, TimmModel)
        if self.is_timm:
            self.num_prefix_tokens = visual.trunk.num_prefix_tokens
            self.width = visual.trunk.embed_dim
        else:
            self.num_prefix_tokens = 1
            self.width = visual.transformer.width
        self._block_ids = sorted({k - 1 for k in feature_layers if k > 0})
        last = self._block_ids[-1] if self._block_ids else 0
        if self.is_timm:
            visual.trunk.prune_intermediate_layers([last], prune_norm=True, prune_head=True)
            visual.head = nn.Identity()
            if not self._block_ids:
                visual.trunk.blocks = visual.trunk.blocks[:0]
        else:
            visual.prune_intermediate_layers([last], prune_norm=True, prune_head=True)
            visual.attn_pool = None
            if getattr(visual, "attn_pool_contrastive", None) is not None:
                visual.attn_pool_contrastive = None
            if not self._block_ids:
                visual.transformer.resblocks = visual.transformer.resblocks[:0]
        self.visual = visual

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_timm:
            t = self.visual.trunk
            return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x))))
        return self.visual._embeds(x)

    def forward(self, x: torch.Tensor, feature_layers: List[int]) -> torch.Tensor:
        """(N, 3, S, S) -> (N, prefix + grid**2, C * len(feature_layers)), CLS (if any) first."""
        p = self.num_prefix_tokens
        states: Dict[int, torch.Tensor] = {}
        if 0 in feature_layers:
            states[0] = self._embed(x)
        if self._block_ids:
            out = self.visual.forward_intermediates(x, indices=self._block_ids, stop_early=True,
                                                    intermediates_only=True, output_fmt="NLC",
                                                    output_extra_tokens=p > 0)
            prefix = out.get("image_intermediates_prefix") or [None] * len(self._block_ids)
            for b, tokens, pre in zip(self._block_ids, out["image_intermediates"], prefix):
                states[b + 1] = tokens if pre is None else torch.cat([pre, tokens], dim=1)
        return torch.cat([states[k] for k in feature_layers], dim=-1)
