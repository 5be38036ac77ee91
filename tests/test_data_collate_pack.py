"""Padding collator shapes, and packing: isolation between samples proven by loss equivalence."""
from __future__ import annotations

import types

import pytest
import torch

from data_pipelines.collate import PackingCollator, PaddingCollator, pack_first_fit, packed_attention_mask
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record
from data_pipelines.tokenize import IGNORE_INDEX
from tests._data_helpers import png, tiny_model


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    small, big, wide = (png(str(d / f"{n}.png"), hw, c) for n, hw, c in
                        [("small", (32, 32), (250, 0, 0)), ("big", (64, 64), (0, 250, 0)),
                         ("wide", (20, 60), (0, 0, 250))])
    recs = [
        Record("img1", [{"role": "user", "content": "<image>\nWhat colour?"},
                        {"role": "assistant", "content": "Red."}], [small]),
        Record("text", [{"role": "user", "content": "Say two words."}, {"role": "assistant", "content": "Two words."},
                        {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Two words."}], []),
        Record("img2", [{"role": "user", "content": "<image>\n<image>\nCompare."},
                        {"role": "assistant", "content": "Green, then blue."}], [big, wide]),
    ]
    builder = MultimodalProcessor.for_model(tiny_model(), max_length=512)
    return [builder.encode_sample(r) for r in recs]


def test_padding_collator_shapes_and_image_order(samples):
    pad = tiny_model().tokenizer.pad_token_id
    batch = PaddingCollator(pad)(samples)
    lengths = [s["length"] for s in samples]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, s in enumerate(samples):  # right padding: the sample, then pad / -100
        n = s["length"]
        assert torch.equal(batch["input_ids"][i, :n], s["input_ids"])
        assert (batch["input_ids"][i, n:] == pad).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
    # images flat over the batch in <image> order: small (sample 0), big then wide (sample 2)
    assert batch["image_sizes"].tolist() == [[32, 32], [64, 64], [20, 60]]
    assert batch["pixel_values"].shape == (3, 5, 3, 32, 32)  # T_max = 5 tiles (the 64x64 image)
    assert torch.equal(batch["pixel_values"][0, :3], samples[0]["pixel_values"][0])
    assert (batch["pixel_values"][0, 3:] == 0).all()  # zero padding on T
    assert torch.equal(batch["pixel_values"][2, :3], samples[2]["pixel_values"][1])
    out = tiny_model()(**batch)  # the model accepts it: token counts and images line up
    assert torch.isfinite(out.loss)

    text_only = PaddingCollator(pad)([samples[1]])
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}
    left = PaddingCollator(pad, padding_side="left", pad_to_multiple_of=8)(samples[:2])
    assert left["input_ids"].shape[1] % 8 == 0 and (left["attention_mask"][:, -1] == 1).all()


def test_pack_first_fit_is_greedy_and_deterministic():
    bins = pack_first_fit([5, 3, 7, 2, 6], 10)
    # longest first: 7 -> bin0, 6 -> bin1, 5 -> bin2, 3 -> bin0 (7+3), 2 -> bin1 (6+2)
    assert bins == [[1, 2], [3, 4], [0]]
    assert pack_first_fit([4, 4, 4], 12) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="sample 1 has 13 tokens, more than the packing max_length=12"):
        pack_first_fit([1, 13], 12)


def test_packed_rows_reset_positions_and_mask_first_labels(samples):
    pad = tiny_model().tokenizer.pad_token_id
    batch = PackingCollator(512, pad)(samples)
    assert batch["input_ids"].shape[0] == 1 and batch["use_cache"] is False and "attention_mask" not in batch
    lengths = [s["length"] for s in samples]
    pos = batch["position_ids"][0].tolist()
    assert pos == sum((list(range(n)) for n in lengths), [])
    starts = [sum(lengths[:k]) for k in range(3)]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    # two packed rows, padded: the padding run restarts positions and has no labels
    two = PackingCollator(max(lengths) + 10, pad)(samples)
    assert two["input_ids"].shape[0] >= 2
    for r in range(two["input_ids"].shape[0]):
        row_pad = two["input_ids"][r] == pad
        assert (two["labels"][r][row_pad] == IGNORE_INDEX).all()
    assert two["image_sizes"].shape[0] == 3


def _loss_sum(model, batch):
    return model(**batch, num_items_in_batch=1).loss.item()  # num_items_in_batch=1: a sum, not a mean


def _loss_and_grads(model, batches):
    """Summed token loss over ``batches`` and the summed gradients of every parameter."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for b in batches:
        loss = model(**b, num_items_in_batch=1).loss
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total, grads


def _tiny(attn):
    from mllm.attention import register
    from mllm.model import MultimodalLM
    from tests._tiny import tiny_config

    register()
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config()).train()  # train mode: no dropout in the tiny config
    model.llm.set_attn_implementation(attn)
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_packed"])
@pytest.mark.parametrize("mode", ["position_ids", "4d"])
def test_packed_loss_and_grads_equal_per_sample(samples, attn, mode):
    model = _tiny(attn)
    pad = model.tokenizer.pad_token_id
    per_sample, ref_grads = _loss_and_grads(model, [PaddingCollator(pad)([s]) for s in samples])
    packed = PackingCollator(512, pad, attention=mode)(samples)
    assert packed["input_ids"].shape[0] == 1  # all three share one row: image, text-only, two images
    loss, grads = _loss_and_grads(model, [packed])
    assert loss == pytest.approx(per_sample, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # the check has teeth: without restarted positions the samples see each other and the loss moves
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    leaky.pop("attention_mask", None)
    assert abs(_loss_sum(model, leaky) - per_sample) > 1e-3


def test_sdpa_packed_runs_one_unmasked_call_per_sample(samples, monkeypatch):
    """sdpa_packed never builds the row's L x L mask: one causal SDPA call per sample (and one for the
    padding run of a padded row), each on that sample's slice."""
    import mllm.attention as attention

    model = _tiny("sdpa_packed")
    pad = model.tokenizer.pad_token_id
    packed = PackingCollator(512, pad)(samples)
    two_rows = PackingCollator(max(s["length"] for s in samples) + 10, pad)(samples)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[0], q.shape[2], attn_mask is None and kw.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    # only mllm.attention's calls (the tower's own sdpa goes through torch.nn.functional untouched)
    monkeypatch.setattr(attention, "F", types.SimpleNamespace(scaled_dot_product_attention=spy))
    with torch.no_grad():
        model(**packed)
    layers = model.llm.config.num_hidden_layers
    lengths = [s["length"] for s in samples]
    assert calls == [(1, n, True) for n in lengths] * layers
    calls.clear()
    with torch.no_grad():
        model(**two_rows)
    per_layer = calls[: len(calls) // layers]
    assert all(c[2] for c in calls) and sum(c[1] for c in per_layer) == two_rows["input_ids"].numel()
    assert sorted(n for _, n, _ in per_layer if n in lengths) == sorted(lengths)
    # a padded batch (attention_mask) takes transformers' own sdpa path: same loss as sdpa
    calls.clear()
    batch = PaddingCollator(pad)(samples)
    ours = _loss_sum(model, batch)
    assert not calls
    model.llm.set_attn_implementation("sdpa")
    assert ours == pytest.approx(_loss_sum(model, batch), rel=1e-6)


def test_packed_loss_equal_per_sample_flex_forward(samples, monkeypatch):
    """flex_attention: transformers' BlockMask from the restarted positions. torch has no flex backward on
    CPU, so this checks the loss (the gradients under flex are checked on CUDA); and flex runs uncompiled
    here, as does the BlockMask construction (torch's reference implementation of the same BlockMask
    semantics): compiling them for each shape takes minutes on CPU."""
    import transformers.integrations.flex_attention as hf_flex
    import transformers.masking_utils as hf_masks
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    monkeypatch.setattr(hf_masks, "create_block_mask",
                        lambda *a, _compile=False, **kw: create_block_mask(*a, _compile=False, **kw))
    model = _tiny("flex_attention")
    pad = model.tokenizer.pad_token_id
    with torch.no_grad():
        per_sample = sum(_loss_sum(model, PaddingCollator(pad)([s])) for s in samples)
        batch = PackingCollator(512, pad)(samples)
        packed = _loss_sum(model, batch)
        leaky = _loss_sum(model, dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None]))
    assert packed == pytest.approx(per_sample, rel=1e-5)
    assert abs(leaky - per_sample) > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention", "sdpa_packed"])
def test_packed_loss_and_grads_equal_per_sample_cuda(samples, attn):
    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn")
    model = _tiny(attn).cuda()
    pad = model.tokenizer.pad_token_id

    def cuda(b):
        return {k: v.cuda() if torch.is_tensor(v) else v for k, v in b.items()}

    # flash-attention kernels take half precision: compare in bf16 autocast with a looser tolerance
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=attn == "flash_attention_2"):
        per_sample, ref_grads = _loss_and_grads(model, [cuda(PaddingCollator(pad)([s])) for s in samples])
        loss, grads = _loss_and_grads(model, [cuda(PackingCollator(512, pad)(samples))])
    tol = 2e-2 if attn == "flash_attention_2" else 1e-4
    assert loss == pytest.approx(per_sample, rel=tol)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=tol, atol=tol * 1e-2, msg=n)


def test_packed_attention_mask_is_block_causal():
    seq = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = packed_attention_mask(seq)
    allowed = (mask == 0)[0, 0]
    assert mask.shape == (1, 1, 6, 6)
    assert allowed[1, 0] and not allowed[0, 1]  # causal inside sample 0
    assert not allowed[2, 1] and allowed[4, 2] and not allowed[5, 4]  # nothing across samples
