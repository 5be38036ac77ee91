"""DiT (adaLN-Zero, cross-attention, fixed pos-emb) and GenHead (MetaQuery through a frozen tiny MultimodalLM)."""
from __future__ import annotations

import math

import pytest
import torch

from mllm.gen.dit import DIT_PRESETS, DiT, DiTConfig, patchify, sincos_2d, unpatchify
from mllm.gen.head import GenHead, GenHeadConfig
from mllm.model import MultimodalLM

from ._tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, cond_dim=24)


def _inputs(cfg: DiTConfig, b: int = 3, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.rand(b, generator=g)
    cond = torch.randn(b, k, cfg.cond_dim, generator=g)
    return x, t, cond, cond.mean(dim=1)


# ---- config ---------------------------------------------------------------------------------------
def test_presets_match_paper_and_round_trip():
    for name, (d, depth, heads) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16),
                                    "XL": (1152, 28, 16)}.items():
        c = DiTConfig.preset(name)
        assert (c.hidden_size, c.depth, c.num_heads, c.patch_size) == (d, depth, heads, 2)
        assert DiTConfig.from_dict(c.to_dict()) == c
    tiny = DiTConfig.preset("tiny")
    assert tiny.input_size == 48 and tiny.in_channels == 3 and set(DIT_PRESETS) == {"tiny", "S", "B", "L", "XL"}
    assert DiTConfig.preset("B", input_size=64).grid_size == 32
    with pytest.raises(ValueError, match="unknown DiT preset 'XXL'.*tiny"):
        DiTConfig.preset("XXL")
    with pytest.raises(ValueError, match="input_size 30 is not a multiple of patch_size 4"):
        DiTConfig(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="unknown field"):
        DiTConfig.from_dict({"hidden": 3})


# ---- geometry -------------------------------------------------------------------------------------
def test_patchify_round_trip_and_token_order():
    x = torch.randn(2, 3, 12, 8)
    tokens = patchify(x, 4)  # (2, 3*2, 48)
    assert tokens.shape == (2, 6, 48)
    assert torch.equal(unpatchify(tokens, 4, 3, 3, 2), x)
    # token 3 is patch row 1, column 1; its features are ordered (pi, pj, c)
    torch.testing.assert_close(tokens[0, 3].view(4, 4, 3), x[0, :, 4:8, 4:8].permute(1, 2, 0))


def test_pos_embed_matches_reference_formula():
    d, g = 16, 5
    pe = sincos_2d(d, g)
    assert pe.shape == (g * g, d)
    for row, col in [(0, 0), (1, 3), (4, 2), (3, 4)]:
        token = row * g + col
        for k in range(d // 4):
            w = 10000 ** (-k / (d // 4))
            assert math.isclose(pe[token, k], math.sin(col * w), abs_tol=1e-6)
            assert math.isclose(pe[token, d // 4 + k], math.cos(col * w), abs_tol=1e-6)
            assert math.isclose(pe[token, d // 2 + k], math.sin(row * w), abs_tol=1e-6)
            assert math.isclose(pe[token, 3 * d // 4 + k], math.cos(row * w), abs_tol=1e-6)


def test_pos_embed_is_a_non_persistent_buffer():
    dit = DiT(DiTConfig(**SMALL))
    assert "pos_embed" not in dict(dit.named_parameters())
    assert not any("pos_embed" in k for k in dit.state_dict())
    assert dit.pos_embed.shape == (1, 16, 32)


# ---- adaLN-Zero -----------------------------------------------------------------------------------
def test_fresh_dit_blocks_are_identity_and_output_is_zero():
    dit = DiT(DiTConfig(**SMALL))
    seen = []
    hooks = [b.register_forward_hook(lambda mod, args, out: seen.append((args[0].clone(), out.clone())))
             for b in dit.blocks]
    x, t, cond, pooled = _inputs(dit.config)
    v = dit(x, t, cond, pooled)
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    for block_in, block_out in seen:
        assert torch.equal(block_in, block_out)
        assert block_in.abs().sum() > 0
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(x))


def test_one_optimizer_step_makes_output_nonzero_and_conditional():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(**SMALL))
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-2)
    x, t, cond, pooled = _inputs(dit.config)
    for step in range(3):
        loss = (dit(x, t, cond, pooled) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0:
            assert dit(x, t, cond, pooled).abs().max() > 1e-3
    v = dit(x, t, cond, pooled)
    # after training the cross-attention and adaLN branches are live: the condition changes the output
    assert not torch.allclose(dit(x, t, cond + 1.0, pooled), v)
    assert not torch.allclose(dit(x, t, cond, pooled + 1.0), v)
    assert not torch.allclose(dit(x, 1 - t, cond, pooled), v)


def test_cond_mask_hides_tokens():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(**SMALL))
    for b in dit.blocks:  # open the zero-initialised cross-attention output
        torch.nn.init.normal_(b.cross_attn.proj.weight, std=0.2)
        torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.2)
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.2)
    x, t, cond, pooled = _inputs(dit.config, k=5)
    mask = torch.tensor([[True, True, True, False, False]] * 3)
    changed = cond.clone()
    changed[:, 3:] = torch.randn_like(changed[:, 3:])
    with torch.no_grad():
        torch.testing.assert_close(dit(x, t, cond, pooled, mask), dit(x, t, changed, pooled, mask))
        torch.testing.assert_close(dit(x, t, cond, pooled, mask), dit(x, t, cond[:, :3], pooled))
        assert not torch.allclose(dit(x, t, cond, pooled), dit(x, t, changed, pooled))
    with pytest.raises(ValueError, match="masks out every condition token"):
        dit(x, t, cond, pooled, torch.zeros(3, 5, dtype=torch.bool))


def test_bad_shapes_are_named():
    dit = DiT(DiTConfig(**SMALL))
    x, t, cond, pooled = _inputs(dit.config)
    with pytest.raises(ValueError, match=r"x has shape \(3, 3, 4, 4\), expected \(B, 3, 8, 8\)"):
        dit(x[:, :, :4, :4], t, cond, pooled)
    with pytest.raises(ValueError, match="cond has shape"):
        dit(x, t, cond[..., :5], pooled)


# ---- GenHead --------------------------------------------------------------------------------------
HEAD_DIT = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2, cond_dim=24)


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=False), tokenizer=tiny_tokenizer).eval()
    model.requires_grad_(False)
    return model


# the MetaQuery condition (K queries at the last layer, v-prediction); test_gen_condition.py covers the others
QUERIES = dict(condition="queries", llm_layers=[-1], refiner_layers=0, prediction="velocity")


def _head(lm, **kw) -> GenHead:
    torch.manual_seed(1)
    cfg = GenHeadConfig(num_queries=4, dit=dict(HEAD_DIT), image_size=16, **{**QUERIES, **kw})
    return GenHead(cfg, llm_hidden_size=lm.llm.config.hidden_size)


def _prompts(lm, texts, pad_to=None):
    """LEFT-padded ids/mask; ``pad_to`` adds extra padding on the left."""
    tok = lm.tokenizer
    rows = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(pad_to or 0, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def test_head_config_round_trip_and_validation():
    cfg = GenHeadConfig(num_queries=4, dit={"preset": "tiny", "depth": 2}, t_shift=2.0)
    assert isinstance(cfg.dit, DiTConfig) and cfg.dit.depth == 2
    assert cfg.dit.hidden_size == DIT_PRESETS["tiny"]["hidden_size"]
    d = cfg.to_dict()
    assert isinstance(d["dit"], dict)
    assert GenHeadConfig.from_dict(d) == cfg
    assert GenHeadConfig(dit="S").dit == DiTConfig.preset("S")
    with pytest.raises(ValueError, match="unknown field"):
        GenHeadConfig.from_dict({"queries": 4})
    with pytest.raises(ValueError, match="image_size 48 .* DiT takes \\(3, 16, 16\\)"):
        GenHead(GenHeadConfig(dit=dict(HEAD_DIT), image_size=48), llm_hidden_size=64)


def test_encode_prompt_depends_on_prompt_not_on_left_padding(lm):
    head = _head(lm)
    texts = ["a red circle at the top", "a blue star on the left and a green square in the center"]
    with torch.no_grad():
        cond_a, mask_a, pooled_a = head.encode_prompt(lm.llm, *_prompts(lm, texts))
        cond_b, _, pooled_b = head.encode_prompt(lm.llm, *_prompts(lm, texts, pad_to=40))
        single, _, _ = head.encode_prompt(lm.llm, *_prompts(lm, texts[:1]))
    assert bool(mask_a.all())  # the queries are never padding
    assert cond_a.shape == (2, 4, 24) and pooled_a.shape == (2, 24)
    torch.testing.assert_close(cond_a, cond_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled_a, pooled_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(single[0], cond_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled_a, cond_a.mean(1))
    assert (cond_a[0] - cond_a[1]).abs().max() > 1e-3  # different prompts -> different conditions
    ids, mask = _prompts(lm, texts)
    right_ids, right_mask = ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match="LEFT-padded"):
        head.encode_prompt(lm.llm, right_ids, right_mask)


def test_loss_trains_queries_connector_dit_but_never_the_llm(lm):
    head = _head(lm).train()
    ids, mask = _prompts(lm, ["a red circle at the top", "a blue star on the left"])
    images = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    # zero-init: step 1 trains only the final linear, step 2 the adaLN / cross-attention outputs, and from
    # step 3 on the gradient reaches the condition (connector, queries) through the frozen LLM
    for _ in range(3):
        loss = head.loss(lm, ids, mask, images, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        for name in ("queries", "connector.1.weight", "dit.final_layer.linear.weight", "dit.x_embedder.weight"):
            assert dict(head.named_parameters())[name].grad is not None, name
        opt.step()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert head.queries.grad.abs().sum() > 0 and head.connector[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())
    after = lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match=r"expected \(B, 3, 16, 16\)"):
        head.loss(lm, ids, mask, torch.rand(2, 3, 8, 8))


def test_condition_dropout_uses_the_null_condition(lm):
    head = _head(lm, cfg_dropout=0.5)
    with torch.no_grad():
        head.null_cond.normal_()
        head.null_pooled.normal_()
    cond, pooled = torch.randn(64, 4, 24), torch.randn(64, 24)
    mask = torch.ones(64, 4, dtype=torch.bool)
    c2, m2, p2 = head.drop_condition(cond, mask, pooled, 0.5, torch.Generator().manual_seed(0))
    assert bool(m2.all())
    dropped = (c2 == head.null_cond).all(dim=(1, 2))
    kept = (c2 == cond).all(dim=(1, 2))
    assert bool((dropped ^ kept).all()) and 15 < int(dropped.sum()) < 49
    assert torch.equal(p2[dropped], head.null_pooled.expand(int(dropped.sum()), -1))
    assert torch.equal(p2[kept], pooled[kept])


def test_sample_shapes_range_determinism_and_cfg_batching(lm):
    head = _head(lm).eval()
    with torch.no_grad():  # a non-trivial head, so cond and null differ in effect
        for p in head.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        head.null_cond.normal_()
    ids, mask = _prompts(lm, ["a red circle at the top", "a blue star on the left"])
    calls = []
    hook = head.dit.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    a = head.sample(lm, ids, mask, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    b = head.sample(lm, ids, mask, steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert calls == [4] * 6  # cond and null in one batch of 2B, once per step
    calls.clear()
    c = head.sample(lm, ids, mask, steps=3, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert calls == [2] * 3
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)
