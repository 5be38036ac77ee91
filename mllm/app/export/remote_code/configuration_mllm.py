"""Configuration of an mllm model exported with its own modeling code (``trust_remote_code=True``).

Written by ``mllm export`` for models transformers has no native class for (Q-Former connectors, towers
without a transformers counterpart, later a DiT head). Loads with transformers 4.57 and 5.x:

    config = AutoConfig.from_pretrained(path, trust_remote_code=True)

Parts:
  vision_backend   "hf": ``vision_config`` is a transformers vision config (built with ``AutoModel``);
                   "open_clip": ``vision_config`` is an open_clip architecture (needs ``open_clip_torch``)
  connector        "mlp2x_gelu" (Linear-GELU-Linear) or "qformer" (``Blip2QFormerModel`` + learned queries
                   + a projection; ``qformer_config``, ``num_query_tokens``)
  text_config      the decoder LLM (built with ``AutoModelForCausalLM``)
  vision_feature_layer (list of hidden-state indices, concatenated), vision_feature_select_strategy
  ("default" drops CLS), image_grid_pinpoints ((h, w) canvases; empty = fixed resolution), tile_size,
  patch_size, has_cls (the tower prepends a CLS token), use_image_newline, image_token_index, extra_heads
  (reserved for further heads, e.g. an image-generation head).
"""
from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


def _hf_config(value):
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    return AutoConfig.for_model(value.pop("model_type"), **value)


class MllmConfig(PretrainedConfig):
    model_type = "mllm"

    def __init__(self, vision_config=None, text_config=None, qformer_config=None, vision_backend="hf",
                 connector="mlp2x_gelu", num_query_tokens=32, vision_feature_layer=None,
                 vision_feature_select_strategy="default", image_token_index=None, image_token="<image>",
                 image_grid_pinpoints=None, tile_size=None, patch_size=None, has_cls=True,
                 use_image_newline=False, extra_heads=None, **kwargs):
        self.vision_backend = vision_backend
        self.vision_config = _hf_config(vision_config) if vision_backend == "hf" else dict(vision_config or {})
        self.text_config = _hf_config(text_config)
        self.qformer_config = dict(qformer_config) if qformer_config is not None else None
        self.connector = connector
        self.num_query_tokens = num_query_tokens
        self.vision_feature_layer = list(vision_feature_layer) if vision_feature_layer is not None else [-2]
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token_index = image_token_index
        self.image_token = image_token
        self.image_grid_pinpoints = [list(p) for p in (image_grid_pinpoints or [])]
        self.tile_size = tile_size
        self.patch_size = patch_size
        self.has_cls = has_cls
        self.use_image_newline = use_image_newline
        self.extra_heads = dict(extra_heads or {})
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config
