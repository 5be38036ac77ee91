"""Padding collator shapes, and packing: isolation between samples proven by loss equivalence."""
from __future__ import annotations

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


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["position_ids", "4d"])
def test_packed_loss_equals_per_sample_loss(samples, attn, mode):
    from mllm.model import MultimodalLM
    from tests._tiny import tiny_config

    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config()).train()  # train mode: no dropout in the tiny config
    model.llm.set_attn_implementation(attn)
    pad = model.tokenizer.pad_token_id
    per_sample = sum(_loss_sum(model, PaddingCollator(pad)([s])) for s in samples)
    packed = PackingCollator(512, pad, attention=mode)(samples)
    assert packed["input_ids"].shape[0] == 1  # all three share one row: image, text-only, two images
    assert _loss_sum(model, packed) == pytest.approx(per_sample, rel=1e-5)
    # the check has teeth: without restarted positions the samples see each other and the loss moves
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    leaky.pop("attention_mask", None)
    assert abs(_loss_sum(model, leaky) - per_sample) > 1e-3


def test_packed_attention_mask_is_block_causal():
    seq = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = packed_attention_mask(seq)
    allowed = (mask == 0)[0, 0]
    assert mask.shape == (1, 1, 6, 6)
    assert allowed[1, 0] and not allowed[0, 1]  # causal inside sample 0
    assert not allowed[2, 1] and allowed[4, 2] and not allowed[5, 4]  # nothing across samples
