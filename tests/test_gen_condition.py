"""The image head's conditioning options (mllm/gen/condition.py): the prompt tokens' own states, several LLM
layers (0 = input embeddings), queries, refiner layers, x0 vs velocity prediction; the measured default;
old checkpoints' gen_head dicts keep their meaning; the typed GenHeadConfig inside ModelConfig.

    .venv/bin/python -m pytest -q tests/test_gen_condition.py
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mllm.config import ModelConfig
from mllm.gen.condition import LEGACY_CONDITION
from mllm.gen.flow import interpolate, rectified_flow_loss, velocity_from_x0
from mllm.gen.head import GenHead, GenHeadConfig
from mllm.model import MultimodalLM

from ._tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIT = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2, cond_dim=24)
TEXTS = ["a red circle at the top", "a blue star on the left and a green square in the center"]


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=False), tokenizer=tiny_tokenizer).eval()
    model.requires_grad_(False)
    return model


def _head(lm, **kw) -> GenHead:
    torch.manual_seed(1)
    cfg = GenHeadConfig(dit=dict(DIT), image_size=16, **{"num_queries": 4, **kw})
    return GenHead(cfg, lm.llm.config.hidden_size, lm.llm.config.num_hidden_layers)


def _prompts(lm, texts, pad_to=0):
    ids, mask = lm.gen_prompt_inputs(texts)
    if pad_to > ids.shape[1]:
        extra = pad_to - ids.shape[1]
        ids = F.pad(ids, (extra, 0), value=lm.tokenizer.pad_token_id)
        mask = F.pad(mask, (extra, 0), value=0)
    return ids, mask


def test_the_default_is_the_measured_choice():
    """benchmarks/gen_conditioning.py: through a frozen tiny LLM the prompt tokens' states with the input
    embeddings alongside, bound by two refiner layers, with x0-prediction, learn the prompt; last-layer
    queries (MetaQuery) do not in the same steps. The SD3 shift of 2 (training and sampling nearer noise)
    binds each shape's colour and kind to its place; without the mean-pooled adaLN condition the count fails."""
    cfg = GenHeadConfig()
    assert (cfg.condition, cfg.llm_layers, cfg.refiner_layers, cfg.prediction) == ("prompt", [0, -1], 2, "x0")
    assert (cfg.t_sampling, cfg.t_shift, cfg.pooled) == ("logit_normal", 2.0, "mean")


@pytest.mark.parametrize("condition,layers,refine", [("prompt", [0, -1], 2), ("prompt", [-1], 0),
                                                      ("prompt+queries", [0, 1, -1], 1), ("queries", [0, -1], 0)])
def test_condition_tokens_mask_padding_and_do_not_depend_on_it(lm, condition, layers, refine):
    head = _head(lm, condition=condition, llm_layers=layers, refiner_layers=refine).eval()
    ids, mask = _prompts(lm, TEXTS)
    with torch.no_grad():
        cond, cmask, pooled = head.encode_prompt(lm.llm, ids, mask)
        cond_p, cmask_p, pooled_p = head.encode_prompt(lm.llm, *_prompts(lm, TEXTS, pad_to=ids.shape[1] + 7))
        single, smask, spooled = head.encode_prompt(lm.llm, *_prompts(lm, TEXTS[:1]))
    n_prompt = ids.shape[1] if "prompt" in condition else 0
    n_queries = 4 if "queries" in condition else 0
    assert cond.shape == (2, n_prompt + n_queries, 24) and cmask.shape == cond.shape[:2]
    if n_prompt:
        assert torch.equal(cmask[:, :n_prompt], mask.bool())  # padding is masked out of the cross-attention
    assert bool(cmask[:, n_prompt:].all())
    # the real tokens' conditions do not depend on how much left padding there is
    torch.testing.assert_close(cond_p[cmask_p], cond[cmask], atol=1e-5, rtol=0)
    torch.testing.assert_close(single[smask], cond[0][cmask[0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled_p, pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(spooled[0], pooled[0], atol=1e-5, rtol=0)
    w = cmask.float().unsqueeze(-1)
    torch.testing.assert_close(pooled, (cond * w).sum(1) / w.sum(1))  # the mean over real tokens
    assert (pooled[0] - pooled[1]).abs().max() > 1e-3


def test_layer_zero_is_the_llm_input_embeddings(lm):
    head = _head(lm, condition="prompt", llm_layers=[0], refiner_layers=0).eval()
    ids, mask = _prompts(lm, TEXTS)
    with torch.no_grad():
        cond, cmask, _ = head.encode_prompt(lm.llm, ids, mask)
        emb = lm.llm.get_input_embeddings()(ids)
        want = head.connector(F.layer_norm(emb, emb.shape[-1:]))
    torch.testing.assert_close(cond[cmask], want[mask.bool()])
    # a different word changes only the states from that token on (the LLM is causal) and layer 0 only there
    other = ids.clone()
    other[0, -1] = lm.tokenizer.convert_tokens_to_ids("Ġleft")
    with torch.no_grad():
        cond2, _, _ = head.encode_prompt(lm.llm, other, mask)
    assert torch.equal(cond2[0, :-1], cond[0, :-1]) and not torch.equal(cond2[0, -1], cond[0, -1])


def test_gradients_reach_the_trainable_conditioning_and_never_the_llm(lm):
    before = {k: v.clone() for k, v in lm.llm.state_dict().items()}
    for condition in ("prompt", "prompt+queries"):
        head = _head(lm, condition=condition, refiner_layers=1).train()
        ids, mask = _prompts(lm, TEXTS)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
        for _ in range(3):  # zero-init DiT: the condition gets gradient from step 3 on
            opt.zero_grad()
            head.loss(lm, ids, mask, torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(0)).backward()
            opt.step()
        grads = {n: p.grad for n, p in head.named_parameters()}
        assert grads["connector.1.weight"].abs().sum() > 0
        assert grads["refiner.layers.0.self_attn.in_proj_weight"].abs().sum() > 0
        assert grads["refiner_pos"].abs().sum() > 0
        assert ("queries" in grads) == (condition == "prompt+queries")
        if "queries" in grads:
            assert grads["queries"].abs().sum() > 0  # through the frozen LLM's activations
    assert all(p.grad is None for p in lm.llm.parameters())
    assert all(torch.equal(before[k], v) for k, v in lm.llm.state_dict().items())


def test_null_condition_and_guided_sampling_with_prompt_tokens(lm):
    head = _head(lm, condition="prompt", cfg_dropout=0.5).eval()
    with torch.no_grad():
        head.null_cond.normal_()
        head.null_pooled.normal_()
        for p in head.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert tuple(head.null_cond.shape) == (1, 24)  # one learned "no prompt" token, padded to the prompt's length
    ids, mask = _prompts(lm, TEXTS)
    with torch.no_grad():
        cond, cmask, pooled = head.encode_prompt(lm.llm, ids, mask)
    c2, m2, p2 = head.drop_condition(cond.repeat(32, 1, 1), cmask.repeat(32, 1), pooled.repeat(32, 1), 0.5,
                                     torch.Generator().manual_seed(0))
    dropped = m2.sum(1) == 1
    assert 16 < int(dropped.sum()) < 48
    assert torch.equal(c2[dropped][:, 0], head.null_cond.expand(int(dropped.sum()), -1))
    assert torch.equal(p2[dropped], head.null_pooled.expand(int(dropped.sum()), -1))
    calls = []
    hook = head.dit.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    a = head.sample(lm, ids, mask, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    b = head.sample(lm, ids, mask, steps=3, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert calls == [4] * 3 + [2] * 3 and a.shape == (2, 3, 16, 16) and not torch.allclose(a, b)


def test_pooled_none_leaves_the_prompt_to_the_cross_attention(lm):
    """pooled "none": the DiT's adaLN input carries no prompt (zeros), so two prompts differ only in the
    cross-attended tokens; "mean" pools the real (unmasked) tokens."""
    ids, mask = _prompts(lm, TEXTS, pad_to=24)
    none, mean = _head(lm, condition="prompt", pooled="none"), _head(lm, condition="prompt", pooled="mean")
    cond, cmask, pooled = none.encode_prompt(lm.llm, ids, mask)
    assert torch.equal(pooled, torch.zeros(2, DIT["cond_dim"]))
    cond_m, cmask_m, pooled_m = mean.encode_prompt(lm.llm, ids, mask)
    w = cmask_m.float().unsqueeze(-1)
    torch.testing.assert_close(pooled_m, (cond_m * w).sum(1) / w.sum(1))
    assert pooled_m.abs().sum() > 0


def test_x0_prediction_target_and_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.9, 1.0])
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(velocity_from_x0(x_t, x0, t), noise - x0, atol=1e-5, rtol=1e-5)
    # the x0 loss is zero for a model that returns x0, the velocity loss for one that returns the velocity
    assert rectified_flow_loss(lambda x, tt: x0, x0, t=t, noise=noise, prediction="x0") == 0
    assert rectified_flow_loss(lambda x, tt: noise - x0, x0, t=t, noise=noise) == 0
    with pytest.raises(ValueError, match="unknown prediction"):
        rectified_flow_loss(lambda x, tt: x0, x0, t=t, noise=noise, prediction="eps")


def test_errors_name_the_option(lm):
    with pytest.raises(ValueError, match="condition 'tokens' is not one of"):
        GenHeadConfig(condition="tokens")
    with pytest.raises(ValueError, match="prediction 'eps' is not one of"):
        GenHeadConfig(prediction="eps")
    with pytest.raises(ValueError, match="pooled 'max' is not one of mean, none"):
        GenHeadConfig(pooled="max")
    with pytest.raises(ValueError, match="t_sampling 'cosine'"):
        GenHeadConfig(t_sampling="cosine")
    with pytest.raises(ValueError, match=r"llm_layers \[9\] out of range: the LLM has 2 layers"):
        _head(lm, llm_layers=[0, 9])


def test_saved_gen_head_without_the_new_fields_keeps_its_meaning(lm, tmp_path):
    """A checkpoint written before these options lists only the old fields: it is the MetaQuery head it was
    (last-layer queries, v-prediction), with the same parameter names, while a user's partial config gets
    today's defaults."""
    old = {"num_queries": 4, "dit": dict(DIT), "autoencoder": {"kind": "identity"}, "image_size": 16,
           "cfg_dropout": 0.1, "t_mean": 0.0, "t_std": 1.0, "t_shift": 1.0}
    data = tiny_config(anyres=False).to_dict()
    cfg = ModelConfig.from_dict({**data, "gen_head": old})
    assert isinstance(cfg.gen_head, GenHeadConfig)
    assert {k: getattr(cfg.gen_head, k) for k in LEGACY_CONDITION} == LEGACY_CONDITION
    assert GenHeadConfig.from_dict(old).condition == "prompt"
    head = GenHead(cfg.gen_head, lm.llm.config.hidden_size)
    names = {n for n, _ in head.named_parameters() if not n.startswith("dit.")}
    assert names == {"queries", "connector.0.weight", "connector.0.bias", "connector.1.weight", "connector.1.bias",
                     "connector.3.weight", "connector.3.bias", "null_cond", "null_pooled"}
    # typed in ModelConfig, and the JSON round trip (save -> load) is exact
    cfg.save(str(tmp_path / "mllm_config.json"))
    again = ModelConfig.load(str(tmp_path / "mllm_config.json"))
    assert again.gen_head == cfg.gen_head and again.to_dict() == cfg.to_dict()
