"""Typed configuration: one dataclass per part, composed into :class:`ModelConfig`.

Presets (``mllm.presets``) are named ``ModelConfig`` instances. A config is overridden from YAML files
and from ``key.sub=value`` strings on the command line, and is written as JSON into every run and
checkpoint directory::

    cfg = get_preset("tiny")
    cfg = apply_overrides(cfg, ["llm.config.num_hidden_layers=2", "anyres.enabled=false"])
    cfg.save("out/mllm_config.json"); ModelConfig.load("out/mllm_config.json")
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from connectors.config import ConnectorConfig  # the connector owns its config; composed here

from . import typed
from .constants import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from .gen.head import GenHeadConfig

CONFIG_NAME = "mllm_config.json"


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def _check_attn(value: str, field_name: str) -> None:
    if value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{field_name} {value!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")


@dataclass
class VisionConfig:
    # registry key: "hf_clip" | "hf_siglip" | "open_clip"
    kind: str = "hf_clip"
    # hub id or local directory for pretrained weights; None = random init from `config`
    name_or_path: Optional[str] = None
    # architecture for random init (HF CLIPVisionConfig / SiglipVisionConfig kwargs, or for open_clip
    # {"model_name": "ViT-B-16", ...overrides of the open_clip model config})
    config: Dict[str, Any] = field(default_factory=dict)
    # hidden state index (HF convention: 0 = embeddings, -1 = last layer) or a list concatenated on channels
    feature_layer: Union[int, List[int]] = -2
    # "default": drop the CLS token; "full": keep every token (SigLIP has no CLS)
    select_strategy: str = "default"
    # transformers' attention kernel for HF towers: "sdpa" | "eager" | "flash_attention_2" | "flex_attention"
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        _check_attn(self.attn_implementation, "vision.attn_implementation")


@dataclass
class LLMConfig:
    # registry key of the loader (mllm.llm.LLM_LOADERS)
    kind: str = "hf_causal_lm"
    # hub id or local directory; None = random init from `config` (must hold "model_type")
    name_or_path: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    # tokenizer: hub id / local dir, or "tiny" for the in-process byte-level BPE; None = name_or_path
    tokenizer: Optional[str] = None
    trust_remote_code: bool = False
    dtype: Optional[str] = None  # "float32" | "bfloat16" | "float16"; None = the checkpoint's
    # transformers' attention kernel: "sdpa" (default) | "eager" | "flash_attention_2" | "flex_attention"
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        _check_attn(self.attn_implementation, "llm.attn_implementation")


@dataclass
class AnyResConfig:
    enabled: bool = False
    # (height, width) pairs, transformers' `image_grid_pinpoints` convention
    grid_pinpoints: List[List[int]] = field(default_factory=list)
    # learned separator appended after every row of unpadded tile features (LLaVA-NeXT)
    image_newline: bool = True


@dataclass
class ImageConfig:
    # tile size fed to the tower (defaults to the tower's own image_size)
    size: Optional[int] = None
    mean: Tuple[float, float, float] = CLIP_MEAN
    std: Tuple[float, float, float] = CLIP_STD
    max_pixels: int = MAX_IMAGE_PIXELS  # decompression-bomb guard


@dataclass
class ModelConfig:
    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    anyres: AnyResConfig = field(default_factory=AnyResConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    chat_template: str = "vicuna_v1"
    image_token: str = IMAGE_TOKEN
    max_length: int = 2048
    # the image-generation head (mllm.gen.head.GenHeadConfig); None = no head
    gen_head: Optional["GenHeadConfig"] = None

    def __post_init__(self) -> None:
        if isinstance(self.gen_head, dict):
            self.gen_head = _gen_head_config(self.gen_head)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data, path="")

    def to_json_string(self) -> str:
        """JSON text (what loggers such as transformers' TensorBoard callback record for a model's config)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                data = yaml.safe_load(f) or {}
            else:
                data = json.load(f)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def copy(self) -> "ModelConfig":
        return copy.deepcopy(self)


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    return x


def _gen_head_config(data: Dict[str, Any]):
    # a config dict here is read as a saved one: checkpoints written before an option existed keep its old
    # meaning (GenHeadConfig.from_dict(saved=True)); the import is here because the head's config lives with
    # the head (mllm.gen), which imports torch
    from .gen.head import GenHeadConfig

    return GenHeadConfig.from_dict(data, saved=True)


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if cls is ModelConfig and isinstance(data, dict) and data.get("gen_head") is not None:
        data = dict(data)
        value = data.pop("gen_head")
        try:
            head = _gen_head_config(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config field {typed._join(path, 'gen_head')!r}: {e}") from None
        cfg = typed.from_dict(cls, data, path=path)
        cfg.gen_head = head
        return cfg
    return typed.from_dict(cls, data, path=path)


# ---- overrides -----------------------------------------------------------------------------------
parse_value = typed.parse_value


def apply_overrides(cfg: ModelConfig, overrides: Sequence[str]) -> ModelConfig:
    """Return a copy of ``cfg`` with ``dotted.key=value`` overrides applied (dict fields accept new keys);
    every value is converted to the field's declared type (``mllm.typed``)."""
    return ModelConfig.from_dict(typed.apply_overrides(cfg.to_dict(), overrides))


def merge_yaml(cfg: ModelConfig, path: str) -> ModelConfig:
    """Deep-merge a YAML file (a partial ModelConfig) onto ``cfg``."""
    with open(path) as f:
        patch = yaml.safe_load(f) or {}
    if not isinstance(patch, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    merged = _deep_merge(cfg.to_dict(), patch)
    try:
        return ModelConfig.from_dict(merged)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _deep_merge(base: Dict[str, Any], patch: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
