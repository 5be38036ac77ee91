"""The connector registry: ``build_connector(cfg, in_dim, out_dim)`` by the exact key ``cfg.kind``.

    from connectors.registry import build_connector
    conn = build_connector(cfg.connector, in_dim=tower.hidden_size, out_dim=llm_hidden)
"""
from __future__ import annotations

from mllm.registry import Registry

from .base import Connector
from .config import ConnectorConfig

CONNECTORS: Registry = Registry("connector")


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> Connector:
    return CONNECTORS.get(cfg.kind)(cfg, in_dim=in_dim, out_dim=out_dim)


# each connector module registers itself on import (they need CONNECTORS, defined above)
from . import mlp, qformer  # noqa: E402,F401
