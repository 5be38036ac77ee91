"""The connector's part of a model config (composed into ``mllm.config.ModelConfig`` as ``connector``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


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
