"""The connector's part of a model config (composed into ``mllm.config.ModelConfig`` as ``connector``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class ConnectorConfig:
    # registry key: "mlp2x_gelu" | "qformer"
    kind: str = "mlp2x_gelu"
    num_queries: int = 32
    # Blip2QFormerConfig kwargs for the Q-Former (hidden_size, num_hidden_layers, ...)
    qformer: Dict[str, Any] = field(default_factory=dict)
