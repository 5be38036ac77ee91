"""Decoder loading (config / local dir), the tiny tokenizer, and the connectors' interface."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from connectors import build_connector
from connectors.mlp import MLPConnector
from connectors.qformer import QFormerConnector
from mllm.config import ConnectorConfig, LLMConfig
from mllm.llm import load_llm
from mllm.tokenizer import ensure_image_token, train_tiny_tokenizer

from ._tiny import LLM, QFORMER


def test_tiny_tokenizer_deterministic_and_reloads(tmp_path):
    a, b = train_tiny_tokenizer(), train_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = "USER: What colour is the circle?\nASSISTANT: red</s> ünïcödé 🙂"
    ids = a.encode(text, add_special_tokens=False)
    assert a.decode(ids) == text  # byte-level: lossless on any text
    ascii_part = "USER: What colour is the circle?\nASSISTANT: red"
    assert len(a.encode(ascii_part, add_special_tokens=False)) <= len(ascii_part) / 2.5  # corpus words are merged
    ensure_image_token(a)
    a.save_pretrained(str(tmp_path))
    c = AutoTokenizer.from_pretrained(str(tmp_path))
    assert c.encode(text + "<image>", add_special_tokens=False) == a.encode(text + "<image>", add_special_tokens=False)
    assert c.eos_token == "</s>" and c.pad_token == "<pad>"


def test_image_token_added_and_embeddings_resized():
    cfg = LLMConfig(config=dict(LLM, vocab_size=1024), tokenizer="tiny")
    model, tok = load_llm(cfg)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == 1024
    assert model.get_input_embeddings().num_embeddings == len(tok) == 1025
    assert tok.encode("x<image>y", add_special_tokens=False).count(image_id) == 1


def test_llm_from_local_directory(tmp_path):
    tok = train_tiny_tokenizer()
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in LLM.items() if k != "model_type"}))
    hf.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    model, tok2 = load_llm(LLMConfig(name_or_path=str(tmp_path)))
    ids = torch.tensor([tok2.encode("a red circle", add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits)


def test_llm_needs_model_type_and_tokenizer():
    with pytest.raises(ValueError, match="model_type"):
        load_llm(LLMConfig(config={"hidden_size": 8}, tokenizer="tiny"))
    with pytest.raises(ValueError, match="llm.tokenizer is required"):
        load_llm(LLMConfig(config=dict(LLM)))
    with pytest.raises(ValueError, match="cannot load the LLM"):
        load_llm(LLMConfig(name_or_path="/nonexistent/dir/for/sure"))


def test_mlp_connector_interface():
    c = build_connector(ConnectorConfig(kind="mlp2x_gelu"), in_dim=48, out_dim=64)
    assert isinstance(c, MLPConnector) and c.preserves_grid and c.num_tokens(37) == 37
    x = torch.randn(3, 37, 48)
    y = c(x)
    assert y.shape == (3, 37, 64)
    # token-wise: permuting tokens permutes outputs
    perm = torch.randperm(37)
    torch.testing.assert_close(c(x[:, perm]), y[:, perm])


def test_qformer_connector_interface():
    c = build_connector(ConnectorConfig(kind="qformer", num_queries=6, qformer=dict(QFORMER)), in_dim=48, out_dim=64)
    assert isinstance(c, QFormerConnector) and not c.preserves_grid and c.num_tokens(999) == 6
    x = torch.randn(2, 20, 48)
    y = c(x)
    assert y.shape == (2, 6, 64)
    # the queries attend to the image: different inputs give different outputs, any input length works
    assert not torch.allclose(y, c(torch.randn(2, 20, 48)))
    assert c(torch.randn(2, 7, 48)).shape == (2, 6, 64)
    y.sum().backward()
    assert c.query_tokens.grad is not None and c.query_tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_queries"):
        build_connector(ConnectorConfig(kind="qformer", num_queries=0), 8, 8)


def test_qformer_default_is_blip2_sized():
    c = QFormerConnector(in_dim=1024, out_dim=2560)
    assert c.num_queries == 32 and c.qformer_config.num_hidden_layers == 12 and c.qformer_config.hidden_size == 768
