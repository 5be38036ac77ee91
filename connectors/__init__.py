"""Connectors: vision features -> LLM embedding space, behind one interface (``connectors.base.Connector``).

    from connectors import build_connector
    conn = build_connector(cfg.connector, in_dim=tower.hidden_size, out_dim=llm_hidden)
    conn.num_tokens(tower.num_tokens)   # tokens per tile it outputs
"""
from __future__ import annotations

from mllm.config import ConnectorConfig
from mllm.registry import Registry

from .base import Connector

CONNECTORS: Registry = Registry("connector")

from . import mlp, qformer  # noqa: E402,F401  (registration)


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> Connector:
    return CONNECTORS.get(cfg.kind)(cfg, in_dim=in_dim, out_dim=out_dim)


__all__ = ["CONNECTORS", "Connector", "build_connector"]
