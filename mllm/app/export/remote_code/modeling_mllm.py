"""An mllm model as a transformers model: vision tower -> connector -> AnyRes packing -> decoder LLM.

Written by ``mllm export`` for models without a native transformers class; built from transformers parts
only (an ``AutoModel`` vision tower, ``Blip2QFormerModel``, ``AutoModelForCausalLM``). Works with
transformers 4.57 and 5.x::

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    inputs = processor(images=[image], text="USER: <image>\\nWhat is this? ASSISTANT:", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=32)     # prompt ids + new ids, like Llava

Each ``<image>`` in the text is expanded by the processor into the exact number of feature vectors the
model produces for that image; the model scatters the features into those positions.

A model exported with an image-generation head (``config.extra_heads["gen"]``, see ``gen_head_mllm.py``)
also draws pictures from prompts: each row is BOS + the prompt's tokens (no chat template), batches LEFT-padded::

    tok = processor.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok("a red circle at the top", add_special_tokens=False).input_ids])
    images = model.generate_images(ids, torch.ones_like(ids), steps=20, cfg_scale=3.0,
                                   generator=torch.Generator().manual_seed(0))   # (B, 3, H, W) in [0, 1]
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, Blip2QFormerConfig, Blip2QFormerModel, PreTrainedModel
from transformers.generation import GenerationMixin

from .anyres_mllm import num_tiles, pack
from .configuration_mllm import MllmConfig
from .gen_head_mllm import DiT, MllmGenHead, restore_pos_embed


class MllmConnector(nn.Module):
    """Parameter names equal mllm's connectors, so an export is a rename of the prefix only."""

    def __init__(self, config: MllmConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.kind = config.connector
        if self.kind == "mlp2x_gelu":
            self.linear_1 = nn.Linear(in_dim, out_dim)
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(out_dim, out_dim)
        elif self.kind == "qformer":
            qcfg = Blip2QFormerConfig(**dict(config.qformer_config, encoder_hidden_size=in_dim))
            self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qcfg.hidden_size))
            self.qformer = Blip2QFormerModel(qcfg)
            self.projection = nn.Linear(qcfg.hidden_size, out_dim)
        else:
            raise ValueError(f"unknown connector {self.kind!r}; known: mlp2x_gelu, qformer")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "mlp2x_gelu":
            return self.linear_2(self.act(self.linear_1(features)))  # (N, T, D)
        queries = self.query_tokens.expand(features.shape[0], -1, -1)  # (N, Q, H)
        mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features,
                           encoder_attention_mask=mask).last_hidden_state  # (N, Q, H)
        return self.projection(out)  # (N, Q, D)


class MllmPreTrainedModel(PreTrainedModel):
    config_class = MllmConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = []

    def _init_weights(self, module):
        # every weight comes from the checkpoint; nothing here is trained from scratch. Only the DiT's
        # position table, derived from its config and not stored, is rebuilt (it is empty after meta loading)
        if isinstance(module, DiT):
            restore_pos_embed(module)


class MllmForConditionalGeneration(MllmPreTrainedModel, GenerationMixin):
    def __init__(self, config: MllmConfig):
        super().__init__(config)
        if config.vision_backend == "hf":
            self.vision_tower = AutoModel.from_config(config.vision_config)
            width = config.vision_config.hidden_size
        elif config.vision_backend == "open_clip":
            from .vision_open_clip import OpenClipTower  # imports open_clip: only exports with that tower need it

            self.vision_tower = OpenClipTower(config.vision_config, config.vision_feature_layer)
            width = self.vision_tower.width
        else:
            raise ValueError(f"unknown vision_backend {config.vision_backend!r}; known: hf, open_clip")
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        hidden = config.text_config.hidden_size
        self.connector = MllmConnector(config, width * len(config.vision_feature_layer), hidden)
        self.image_newline = nn.Parameter(torch.zeros(hidden)) if config.use_image_newline else None
        gen = (config.extra_heads or {}).get("gen")
        self.gen_head = MllmGenHead(gen, hidden) if gen is not None else None
        self.post_init()

    # ---- embeddings (delegated to the LLM) ----------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    # ---- images --------------------------------------------------------------------------------------------
    def _tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(sum T, 3, S, S) -> (sum T, t, C * n_layers), the selected hidden states."""
        cfg = self.config
        if cfg.vision_backend == "hf":
            states = self.vision_tower(tiles, output_hidden_states=True).hidden_states
            feats = torch.cat([states[k] for k in cfg.vision_feature_layer], dim=-1)
            prefix = 1 if cfg.has_cls else 0
        else:
            feats = self.vision_tower(tiles, cfg.vision_feature_layer)
            prefix = self.vision_tower.num_prefix_tokens  # CLS (+ register tokens)
        if prefix and cfg.vision_feature_select_strategy == "default":
            feats = feats[:, prefix:]  # patch tokens only
        return feats

    def get_image_features(self, pixel_values: torch.Tensor,
                           image_sizes: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """(N, T_max, 3, S, S) zero-padded tiles (or (N, 3, S, S)) -> one (tokens_i, D) tensor per image."""
        cfg = self.config
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)  # one tile per image
        s = cfg.tile_size
        if image_sizes is None:
            image_sizes = torch.tensor([[s, s]] * pixel_values.shape[0])
        sizes = [tuple(int(v) for v in hw) for hw in image_sizes.tolist()]
        counts = [num_tiles(hw, cfg.image_grid_pinpoints, s) for hw in sizes]
        tiles = torch.cat([pixel_values[i, :c] for i, c in enumerate(counts)])  # (sum T, 3, S, S)
        dtype = next(self.vision_tower.parameters()).dtype
        feats = self.connector(self._tile_features(tiles.to(dtype)))  # (sum T, t, D)
        spatial = cfg.connector != "qformer"
        return [pack(f, hw, cfg.image_grid_pinpoints, s, cfg.patch_size, self.image_newline, spatial)
                for f, hw in zip(feats.split(counts), sizes)]

    def _embed(self, input_ids, pixel_values=None, image_sizes=None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
        if pixel_values is None:
            return embeds
        features = torch.cat(self.get_image_features(pixel_values, image_sizes)).to(embeds.dtype)  # (n, D)
        mask = input_ids == self.config.image_token_index  # (B, L)
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"Image features and image tokens do not match: {int(mask.sum())} <image> tokens, "
                             f"{features.shape[0]} features")
        return embeds.masked_scatter(mask.unsqueeze(-1), features)

    # ---- LM ----------------------------------------------------------------------------------------------------
    def forward(self, input_ids=None, pixel_values=None, image_sizes=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, pixel_values, image_sizes)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, labels=labels,
                                   **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, image_sizes=None, attention_mask=None, **kwargs):
        """Returns the prompt ids followed by the new ids (as Llava does)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self._embed(input_ids, pixel_values, image_sizes)
        gen_config = copy.deepcopy(kwargs.pop("generation_config", None) or self.generation_config)
        kwargs = gen_config.update(**kwargs)  # generation settings go into the config; the rest stays
        new = self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                           generation_config=gen_config, **kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)

    # ---- image generation (models exported with a generation head) ------------------------------------------
    @torch.no_grad()
    def generate_images(self, prompt_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                        steps: int = 10, cfg_scale: float = 1.5,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """LEFT-padded prompt ids (B, L) -> images (B, 3, H, W) in [0, 1]; the starting noise comes from
        ``generator`` (the same seed gives the same images as the source mllm model)."""
        if self.gen_head is None:
            raise ValueError("this model was exported without an image-generation head")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        return self.gen_head.sample(self.language_model, prompt_ids, attention_mask, steps=steps,
                                    cfg_scale=cfg_scale, generator=generator)
