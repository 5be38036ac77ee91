"""Connectors: vision features -> LLM embedding space, behind one interface (``connectors.base.Connector``).

    from connectors import build_connector
    conn = build_connector(cfg.connector, in_dim=tower.hidden_size, out_dim=llm_hidden)
    conn.num_tokens(tower.num_tokens)   # tokens per tile it outputs

Modules: ``config`` (``ConnectorConfig``, plain data), ``base`` (the interface), ``registry``
(``CONNECTORS``, ``build_connector``), ``mlp`` (LLaVA's 2-layer MLP), ``qformer`` (BLIP-2's Q-Former).
The package depends on nothing above ``mllm.registry``.
"""
from __future__ import annotations

from .config import ConnectorConfig

_LAZY = {"CONNECTORS": "connectors.registry", "build_connector": "connectors.registry",
         "Connector": "connectors.base"}


def __getattr__(name):
    # lazy: ``mllm.config`` composes ``connectors.config``, and reading a config must not import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'connectors' has no attribute {name!r}")


__all__ = ["CONNECTORS", "Connector", "ConnectorConfig", "build_connector"]
