"""``MultimodalLM``: vision tower -> connector -> AnyRes packing -> scattered into a causal LM's embeddings.

    model = MultimodalLM.build(get_preset("tiny"))
    batch = processor([img])                       # pixel_values (N, T, 3, S, S), image_sizes (N, 2)
    out = model(input_ids, attention_mask, pixel_values=..., image_sizes=..., labels=...)
    ids = model.generate(input_ids, attention_mask, pixel_values=..., image_sizes=..., max_new_tokens=16)
    model.save_pretrained("ckpt"); MultimodalLM.from_pretrained("ckpt")

Image generation (optional DiT head, ``mllm.gen``; ``config.gen_head`` set -> ``model.gen_head``):

    model.add_gen_head({"num_queries": 16, "dit": "tiny"})       # a fresh head on a loaded model
    ids, mask = model.gen_prompt_inputs(["a red circle at the top"])   # left-padded, BOS first
    loss = model.gen_loss(ids, mask, images)                     # the gen stage's objective (a scalar)
    images = model.generate_images(["a red circle at the top"], steps=20, cfg_scale=3.0, seed=0)

Images are given flat for the whole batch, in the order their ``<image>`` runs appear (row by row, left
to right); each image's tokens form one contiguous run of ``geometry.num_image_tokens(hw)`` ids.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from connectors.registry import build_connector

from .batching import pad_left
from .checkpoint import ADAPTER_DIR, load_state_dict_files, load_weights, save_pretrained
from .config import CONFIG_NAME, ModelConfig
from .gen.head import GenHead, GenHeadConfig
from .geometry import ImageGeometry
from .llm import load_llm
from .tokenizer import load_tokenizer
from .vision import build_vision_tower


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, vision_tower, connector, llm, tokenizer, gen_head=None):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.connector = connector
        self.llm = llm
        self.tokenizer = tokenizer
        # the image-generation head (mllm.gen.head.GenHead) or None; its weights live under "gen_head."
        self.gen_head = gen_head
        self.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        if config.image.size is not None and config.image.size != vision_tower.image_size:
            raise ValueError(f"image.size={config.image.size} but the vision tower takes "
                             f"{vision_tower.image_size}px tiles")
        pinpoints = tuple(tuple(int(v) for v in p) for p in config.anyres.grid_pinpoints) if config.anyres.enabled else ()
        if config.anyres.enabled and not pinpoints:
            raise ValueError("anyres.enabled is true but anyres.grid_pinpoints is empty")
        use_newline = bool(pinpoints) and config.anyres.image_newline and connector.preserves_grid
        self.geometry = ImageGeometry(
            tile_size=vision_tower.image_size, patch_size=vision_tower.patch_size, has_cls=vision_tower.has_cls,
            select_strategy=vision_tower.select_strategy, grid_pinpoints=pinpoints, image_newline=use_newline,
            queries_per_tile=None if connector.preserves_grid else connector.num_tokens(vision_tower.num_tokens),
        )
        if use_newline:
            d = connector.out_dim
            # LLaVA-NeXT's init: N(0, 1/d)
            self.image_newline = nn.Parameter(torch.randn(d) / math.sqrt(d))
        else:
            self.image_newline = None
        # Under ZeRO-3 every rank must run the same modules each step (parameters are gathered by
        # collective calls in forward): a rank whose batch has no image then runs one zero tile whose
        # features are added with weight 0. The trainer turns this on.
        self.always_run_vision = False

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: ModelConfig, tokenizer=None) -> "MultimodalLM":
        """Assemble from a config: pretrained parts where names/paths are given, random init elsewhere."""
        config = config.copy()
        tower = build_vision_tower(config.vision)
        llm, tokenizer = load_llm(config.llm, tokenizer=tokenizer, image_token=config.image_token)
        connector = build_connector(config.connector, in_dim=tower.hidden_size, out_dim=llm.config.hidden_size)
        dtype = llm.get_input_embeddings().weight.dtype
        connector.to(dtype)
        gen_head = _build_gen_head(config.gen_head, llm, dtype) if config.gen_head else None
        return cls(config, tower, connector, llm, tokenizer, gen_head=gen_head)

    def add_gen_head(self, cfg: Optional[Dict[str, Any]] = None):
        """Attach a freshly initialised image-generation head (``mllm.gen.head.GenHeadConfig`` fields; None =
        its defaults) and record its resolved config in ``self.config.gen_head``; returns the head."""
        if self.gen_head is not None:
            raise ValueError("the model already has an image-generation head (config.gen_head is set); "
                             "train it further instead of adding another")
        head = _build_gen_head(cfg or {}, self.llm, self.llm.get_input_embeddings().weight.dtype)
        self.gen_head = head.to(self.device)
        self.config.gen_head = head.config
        return head

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "MultimodalLM":
        return load_pretrained(path, **kwargs)

    def save_pretrained(self, path: str, **kwargs) -> None:
        save_pretrained(self, path, **kwargs)

    # ---- properties ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def num_image_tokens(self, image_hw: Sequence[int]) -> int:
        return self.geometry.num_image_tokens(image_hw)

    # ---- images -> features -----------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> List[torch.Tensor]:
        """(N, T_max, 3, S, S) zero-padded tiles + (N, 2) sizes -> N tensors (num_image_tokens(hw_i), D)."""
        if pixel_values.dim() == 4:  # (N, 3, S, S): one tile per image
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.shape[0] != image_sizes.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images in pixel_values but {image_sizes.shape[0]} image_sizes")
        sizes = [tuple(int(v) for v in hw) for hw in image_sizes.tolist()]
        counts = [self.geometry.num_tiles(hw) for hw in sizes]
        if max(counts) > pixel_values.shape[1]:
            raise ValueError(f"an image needs {max(counts)} tiles but pixel_values holds {pixel_values.shape[1]} per image")
        tiles = torch.cat([pixel_values[i, :c] for i, c in enumerate(counts)])  # (sum T_i, 3, S, S)
        tiles = tiles.to(device=self.device, dtype=self.vision_tower.dtype)
        feats = self.vision_tower(tiles)  # (sum T_i, t, C)
        feats = self.connector(feats.to(self._connector_dtype()))  # (sum T_i, t', D)
        newline = self.image_newline
        return [self.geometry.pack(f, hw, newline) for f, hw in zip(feats.split(counts), sizes)]

    def _connector_dtype(self) -> torch.dtype:
        return next(self.connector.parameters()).dtype

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                     image_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with each ``<image>`` run replaced by that image's features. (B, L, D)."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, D)
        is_image = input_ids == self.image_token_id  # (B, L)
        found = is_image.sum(dim=1).tolist()
        if pixel_values is None or pixel_values.numel() == 0:
            if any(found):
                rows = [i for i, n in enumerate(found) if n]
                raise ValueError(f"sample(s) {rows} hold <image> tokens ({[found[i] for i in rows]}) but no images were given")
            if self.always_run_vision and torch.is_grad_enabled():
                embeds = embeds + 0.0 * self._dummy_vision_features().to(embeds.dtype)
            return embeds
        if image_sizes is None:
            raise ValueError("image_sizes is required with pixel_values")
        features = self.encode_images(pixel_values, image_sizes)
        self._check_counts(found, [f.shape[0] for f in features])
        flat = torch.cat(features).to(embeds.dtype)  # (sum n_i, D)
        return embeds.masked_scatter(is_image.unsqueeze(-1), flat)

    def _dummy_vision_features(self) -> torch.Tensor:
        """A scalar that depends on every vision/connector parameter (for lock-step ranks)."""
        s = self.vision_tower.image_size
        tile = torch.zeros(1, 3, s, s, device=self.device, dtype=self.vision_tower.dtype)
        out = self.connector(self.vision_tower(tile).to(self._connector_dtype())).sum()
        if self.image_newline is not None:
            out = out + self.image_newline.sum()
        return out

    @staticmethod
    def _check_counts(found: List[int], per_image: List[int]) -> None:
        """Assign images to samples in order; any sample whose tokens don't add up is named."""
        j = 0
        for row, n_tokens in enumerate(found):
            expected = 0
            first = j
            while expected < n_tokens and j < len(per_image):
                expected += per_image[j]
                j += 1
            if expected != n_tokens:
                raise ValueError(f"sample {row}: found {n_tokens} <image> tokens but its images "
                                 f"{list(range(first, j))} produce {expected} features "
                                 f"(per image: {per_image[first:j]}); the prompt and images do not match")
        if j != len(per_image):
            raise ValueError(f"{len(per_image) - j} image(s) left over after every <image> run was filled "
                             f"({len(per_image)} images given, {j} used): more images than <image> tokens")

    # ---- LM -----------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                pixel_values: Optional[torch.Tensor] = None, image_sizes: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None, **kwargs):
        """The LM's output (logits, and the loss with ``labels``). The image head's loss is ``gen_loss``."""
        embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        if self.training:
            # a training step never reads a KV cache; the LLM's config default (use_cache=True) would build
            # one per step, and under torch_compile its per-layer state would recompile every layer
            kwargs.setdefault("use_cache", False)
        if labels is not None:
            # image positions never carry a target, whatever the caller built
            labels = labels.masked_fill(input_ids == self.image_token_id, -100)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                        labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[torch.Tensor] = None, image_sizes: Optional[torch.Tensor] = None,
                 **generate_kwargs) -> torch.Tensor:
        """Returns only the new tokens (B, n). Batch with left padding."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("batched generation needs left padding (tokenizer.padding_side = 'left')")
        embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        tok = self.tokenizer
        generate_kwargs.setdefault("pad_token_id", tok.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", tok.eos_token_id)
        generate_kwargs.setdefault("do_sample", False)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # ---- image generation ---------------------------------------------------------------------------
    def gen_loss(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], images: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The image head's flow-matching loss (a scalar) for left-padded prompts (B, L) and their images
        (B, 3, H, W) in [0, 1]: the gen stage's objective."""
        if self.gen_head is None:
            raise ValueError("gen_loss: the model has no image-generation head (config.gen_head is unset; add "
                             "one with add_gen_head or train the 'gen' stage)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.gen_head.loss(self, input_ids, attention_mask, images, generator=generator)

    def gen_prompt_inputs(self, prompts: Sequence[str]):
        """Prompts -> (input_ids, attention_mask) (B, L) for the generation head: BOS + the text's tokens,
        left-padded (the head appends its queries after the last real token). The same ids training saw."""
        rows = [gen_prompt_ids(self.tokenizer, p) for p in prompts]
        ids, mask = pad_left(rows, self.tokenizer.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate_images(self, prompts: Sequence[str], *, steps: int = 10, cfg_scale: float = 1.5,
                        seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for ``prompts``; the same ``seed`` gives the same images."""
        if self.gen_head is None:
            raise ValueError("this model has no image-generation head (config.gen_head is unset): train the "
                             "'gen' stage on it first (mllm train --stage gen)")
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
        ids, mask = self.gen_prompt_inputs(prompts)
        return self.gen_head.sample(self, ids, mask, steps=steps, cfg_scale=cfg_scale, generator=generator)

    def gradient_checkpointing_enable(self, vision: bool = True, kwargs: Optional[Dict[str, Any]] = None) -> None:
        """``kwargs``: torch.utils.checkpoint options (default: non-reentrant, which works with frozen inputs)."""
        self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(kwargs or {"use_reentrant": False}))
        if vision:
            self.vision_tower.gradient_checkpointing_enable()


# ---- generation-head helpers (plain functions: the gen data pipeline tokenises the same way) ----------
def _build_gen_head(cfg: Dict[str, Any], llm, dtype: torch.dtype):
    head_cfg = cfg if isinstance(cfg, GenHeadConfig) else GenHeadConfig.from_dict(dict(cfg))
    return GenHead(head_cfg, llm.config.hidden_size, getattr(llm.config, "num_hidden_layers", None)).to(dtype)


def gen_prompt_ids(tokenizer, prompt: str) -> List[int]:
    """BOS + the prompt's tokens (no chat template: the head reads a plain description)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def load_pretrained(path: str, device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> MultimodalLM:
    """A checkpoint directory (``mllm.checkpoint`` layout) -> the model, strictly (missing or unexpected
    weight keys are errors), with a LoRA adapter kept beside the base weights loaded through peft."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not an mllm checkpoint "
                                f"(a llava-hf checkpoint can be converted with `mllm import`)")
    cfg = ModelConfig.load(cfg_path)
    tokenizer = load_tokenizer(path)
    model = MultimodalLM.build(cfg, tokenizer=tokenizer)
    load_weights(model, load_state_dict_files(path), source=path)
    if hasattr(model.llm, "tie_weights"):
        model.llm.tie_weights()
    adapter = os.path.join(path, ADAPTER_DIR)
    if os.path.isdir(adapter):
        from peft import PeftModel  # here: peft is needed only for checkpoints that keep an adapter

        model.llm = PeftModel.from_pretrained(model.llm, adapter, is_trainable=False)
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model
