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
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

CONFIG_NAME = "mllm_config.json"


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


@dataclass
class ConnectorConfig:
    # registry key: "mlp2x_gelu" | "qformer"
    kind: str = "mlp2x_gelu"
    num_queries: int = 32
    # Blip2QFormerConfig kwargs for the Q-Former (hidden_size, num_hidden_layers, ...)
    qformer: Dict[str, Any] = field(default_factory=dict)
    # MLP only: None = PyTorch's default init; a float = the output layer starts small, so every output
    # coordinate has about this std (the scale of the LLM's token embeddings) instead of a norm tens of
    # times the text's. Plain weights, so the native LlavaMultiModalProjector export is unchanged.
    output_std: Optional[float] = None


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
    mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    max_pixels: int = 89_478_485  # decompression-bomb guard (PIL's default limit)


@dataclass
class ModelConfig:
    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    anyres: AnyResConfig = field(default_factory=AnyResConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    chat_template: str = "vicuna_v1"
    image_token: str = "<image>"
    max_length: int = 2048
    gen_head: Optional[Dict[str, Any]] = None

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


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config field {path or '<root>'!r}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(repr(_join(path, u)) for u in unknown)}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(path, name))
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is Union and value is not None:
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _from_dict(arg, value, path)
    return value


# ---- overrides -----------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """Parse a command-line value with YAML rules (``2`` -> int, ``true`` -> bool, ``[1,2]`` -> list)."""
    return yaml.safe_load(text)


def apply_overrides(cfg: ModelConfig, overrides: Sequence[str]) -> ModelConfig:
    """Return a copy of ``cfg`` with ``dotted.key=value`` overrides applied (dict fields accept new keys)."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"override {item!r}: no config field {'.'.join(parts[:i + 1])!r}")
            if node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {'.'.join(parts[:-1])!r} is not a mapping")
        node[parts[-1]] = parse_value(raw)
    return ModelConfig.from_dict(data)


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
