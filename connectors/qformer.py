"""BLIP-2's Q-Former: learned queries cross-attend to the vision features, then a linear projection.

Built on transformers' ``Blip2QFormerModel`` (BERT layers with cross-attention every
``cross_attention_frequency`` layers); the queries and the projection into the LLM are ours. The output
has ``num_queries`` tokens per tile whatever the input length, so it does not preserve the patch grid.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from .config import ConnectorConfig

from .registry import CONNECTORS
from .base import Connector

# A small default; BLIP-2 itself uses hidden 768, 12 layers, 12 heads, intermediate 3072.
DEFAULT_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, cross_attention_frequency=2)


class QFormerConnector(Connector):
    preserves_grid = False

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, qformer: dict | None = None):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"connector.num_queries must be >= 1, got {num_queries}")
        kwargs = {**DEFAULT_QFORMER, **(qformer or {})}
        kwargs["encoder_hidden_size"] = in_dim
        self.qformer_config = Blip2QFormerConfig(**kwargs)
        self.in_dim, self.out_dim, self.num_queries = in_dim, out_dim, num_queries
        hidden = self.qformer_config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden))
        nn.init.normal_(self.query_tokens, std=self.qformer_config.initializer_range)
        self.qformer = Blip2QFormerModel(self.qformer_config)
        self.projection = nn.Linear(hidden, out_dim)

    def num_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n = features.shape[0]
        queries = self.query_tokens.expand(n, -1, -1)  # (N, Q, H)
        mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)  # (N, T_in)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features,
                           encoder_attention_mask=mask).last_hidden_state  # (N, Q, H)
        return self.projection(out)  # (N, Q, out_dim)


@CONNECTORS.register("qformer")
def _build(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> QFormerConnector:
    return QFormerConnector(in_dim, out_dim, num_queries=cfg.num_queries, qformer=cfg.qformer)
