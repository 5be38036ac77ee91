"""MultimodalLM: scatter of image features, mixed batches, count errors, KV cache, connectors."""
from __future__ import annotations

import pytest
import torch

from mllm.model import MultimodalLM

from ._tiny import make_batch, tiny_config


@pytest.fixture(scope="module")
def anyres_model():
    torch.manual_seed(0)
    return MultimodalLM.build(tiny_config(anyres=True)).eval()


@pytest.fixture(scope="module")
def qformer_model():
    torch.manual_seed(0)
    return MultimodalLM.build(tiny_config(anyres=False, connector="qformer")).eval()


def test_image_token_is_real_special_token(anyres_model):
    tok = anyres_model.tokenizer
    assert anyres_model.image_token_id < anyres_model.llm.get_input_embeddings().num_embeddings
    assert tok.encode("a <image> b", add_special_tokens=False).count(anyres_model.image_token_id) == 1
    assert "<image>" in tok.all_special_tokens


def test_features_land_at_image_positions(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("describe <image> now", [(40, 70)])])
    with torch.no_grad():
        embeds = m.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["image_sizes"])
        feats = m.encode_images(batch["pixel_values"], batch["image_sizes"])[0]
        text = m.llm.get_input_embeddings()(batch["input_ids"])
    pos = batch["input_ids"][0] == m.image_token_id
    assert int(pos.sum()) == feats.shape[0] == m.num_image_tokens((40, 70))
    torch.testing.assert_close(embeds[0, pos], feats)
    torch.testing.assert_close(embeds[0, ~pos], text[0, ~pos])


def test_mixed_batch_text_only_and_multi_image(anyres_model):
    m = anyres_model
    batch = make_batch(m, [
        ("<image> what is this?", [(32, 32)]),
        ("just text, no image at all", []),
        ("compare <image> with <image> please", [(20, 90), (64, 64)]),
    ])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = m(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_text_only_row_unchanged_by_images_elsewhere(anyres_model):
    """A text-only sample's logits do not depend on the images of its batch neighbours."""
    m = anyres_model
    both = make_batch(m, [("<image> hi", [(32, 32)]), ("plain text here", [])])
    alone = make_batch(m, [("plain text here", [])])
    with torch.no_grad():
        lb = m(**both).logits[1]
        la = m(**alone).logits[0]
    n = int(alone["attention_mask"].sum())
    torch.testing.assert_close(lb[:n], la[:n], atol=1e-5, rtol=1e-5)


def test_count_mismatch_names_sample_expected_and_found(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("ok <image>", [(32, 32)]), ("bad <image>", [(32, 32)])])
    ids = batch["input_ids"].clone()
    row = ids[1]
    first = int((row == m.image_token_id).nonzero()[0])
    ids[1, first] = m.tokenizer.convert_tokens_to_ids("a") if "a" in m.tokenizer.get_vocab() else 5
    with pytest.raises(ValueError, match=r"sample 1: found \d+ <image> tokens .* produce \d+ features"):
        m(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
          image_sizes=batch["image_sizes"])


def test_more_images_than_tokens_and_tokens_without_images(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("one <image>", [(32, 32)])])
    extra_pv = torch.cat([batch["pixel_values"], batch["pixel_values"]])
    extra_sizes = torch.cat([batch["image_sizes"], batch["image_sizes"]])
    with pytest.raises(ValueError, match="more images than <image> tokens"):
        m(input_ids=batch["input_ids"], pixel_values=extra_pv, image_sizes=extra_sizes)
    with pytest.raises(ValueError, match="no images were given"):
        m(input_ids=batch["input_ids"])


def test_labels_never_target_image_positions(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("x <image> y", [(32, 32)])])
    ids = batch["input_ids"]
    with torch.no_grad():
        full = m(**batch, labels=ids.clone()).loss
        manual = ids.masked_fill(ids == m.image_token_id, -100)
        ref = m(**batch, labels=manual).loss
    torch.testing.assert_close(full, ref)


def test_generate_kv_cache_equivalence(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("look <image> and say", [(48, 100)])])
    with torch.no_grad():
        a = m.generate(**batch, max_new_tokens=12, use_cache=True, min_new_tokens=12)
        b = m.generate(**batch, max_new_tokens=12, use_cache=False, min_new_tokens=12)
    assert a.shape[1] == 12
    assert torch.equal(a, b)


def test_generate_batch_left_padded_matches_single(anyres_model):
    m = anyres_model
    samples = [("look <image> and say", [(48, 100)]), ("a much longer prompt with <image> inside it", [(90, 30)])]
    batch = make_batch(m, samples, pad_left=True)
    with torch.no_grad():
        out = m.generate(**batch, max_new_tokens=6, min_new_tokens=6)
    # per-sample runs with the same pixels as the batched run
    for i, s in enumerate(samples):
        one = make_batch(m, [s])
        one["pixel_values"] = batch["pixel_values"][i:i + 1, : one["pixel_values"].shape[1]]
        with torch.no_grad():
            single = m.generate(**one, max_new_tokens=6, min_new_tokens=6)
        assert torch.equal(out[i], single[0])


def test_right_padding_rejected_for_batched_generation(anyres_model):
    m = anyres_model
    batch = make_batch(m, [("short", []), ("a longer prompt here", [])])
    with pytest.raises(ValueError, match="left padding"):
        m.generate(**batch, max_new_tokens=2)


def test_qformer_tokens_per_image(qformer_model):
    m = qformer_model
    assert m.num_image_tokens((10, 500)) == 4  # num_queries, fixed resolution
    batch = make_batch(m, [("<image> q", [(32, 32)]), ("<image> and <image>", [(8, 8), (100, 20)])])
    out = m(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)


def test_qformer_with_anyres_counts_queries_per_tile():
    m = MultimodalLM.build(tiny_config(anyres=True, connector="qformer"))
    hw = (32, 64)
    assert m.num_image_tokens(hw) == m.geometry.num_tiles(hw) * 4
    batch = make_batch(m, [("<image> hi there", [hw])])
    assert torch.isfinite(m(**batch, labels=batch["input_ids"]).loss)


def test_gradients_reach_connector_and_newline(anyres_model):
    m = MultimodalLM.build(tiny_config(anyres=True))
    batch = make_batch(m, [("see <image> ok", [(40, 90)])])
    m(**batch, labels=batch["input_ids"]).loss.backward()
    assert m.connector.linear_1.weight.grad is not None and m.connector.linear_1.weight.grad.abs().sum() > 0
    assert m.image_newline.grad is not None and m.image_newline.grad.abs().sum() > 0


def test_fixed_resolution_has_no_newline():
    m = MultimodalLM.build(tiny_config(anyres=False))
    assert m.image_newline is None
    assert m.num_image_tokens((13, 400)) == (32 // 8) ** 2


def test_siglip_tower_model_forward():
    m = MultimodalLM.build(tiny_config(anyres=True, tower="hf_siglip"))
    assert not m.geometry.has_cls and m.geometry.select_strategy == "full"
    batch = make_batch(m, [("<image> what", [(50, 20)])])
    assert torch.isfinite(m(**batch, labels=batch["input_ids"]).loss)


def test_always_run_vision_touches_every_vision_parameter_without_changing_outputs():
    m = MultimodalLM.build(tiny_config(anyres=True))
    batch = make_batch(m, [("text only sample", [])])
    ref = m(**batch, labels=batch["input_ids"])
    m.always_run_vision = True
    out = m(**batch, labels=batch["input_ids"])
    torch.testing.assert_close(out.logits, ref.logits)
    out.loss.backward()
    for name, p in list(m.vision_tower.named_parameters()) + list(m.connector.named_parameters()):
        assert p.grad is not None, name  # the parameter took part in forward and backward
    assert m.image_newline.grad is not None
