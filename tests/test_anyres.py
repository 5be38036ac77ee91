"""AnyRes geometry, packing and preprocessing against transformers' LLaVA-NeXT, over hundreds of sizes.

References: ``select_best_resolution``, ``image_size_to_num_patches``, ``unpad_image``,
``LlavaNextProcessor`` token counts, ``LlavaNextModel.pack_image_features`` / ``get_image_features`` on a
tiny random model, ``LlavaNextImageProcessorPil`` and ``CLIPImageProcessorPil`` pixels.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, PreTrainedTokenizerFast
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, image_size_to_num_patches
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad_image
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from data_pipelines.image_processor import AnyResImageProcessor
from mllm import anyres
from mllm.config import ModelConfig

LLAVA_NEXT_PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SMALL_PINS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96], [96, 96], [32, 32]]
# (name, tile_size, patch_size, pinpoints): a small CPU-friendly set, LLaVA-NeXT's real one, and a
# tile that the patch does not divide (SigLIP-so400m is 384 / 14: the tower floors the grid)
GEOMETRIES = [("small", 32, 8, SMALL_PINS), ("llava-next", 336, 14, LLAVA_NEXT_PINS),
              ("non-divisible", 30, 7, [[30, 60], [60, 30], [60, 60], [90, 30], [30, 90]])]
GEOMETRY_IDS = [g[0] for g in GEOMETRIES]
# Sizes where transformers' int(round(x, 7)) in the unpadding differs from plain truncation (x lands a hair
# below an integer), found by brute force over these geometries
FLOAT_EDGE_SIZES = [(47, 188), (94, 376), (188, 47), (376, 94), (55, 176), (88, 55), (88, 99), (110, 352),
                    (176, 110), (343, 392), (392, 343), (47, 1128)]


def _sizes(pins, tile):
    """Hundreds of (h, w): extremes, pinpoints exactly and off by one, tiles, random and very thin ones."""
    sizes = {(1, 1), (1, 2), (2, 1), (tile, tile), (tile - 1, tile + 1), (3 * tile, tile), (tile, 3 * tile)}
    sizes |= set(FLOAT_EDGE_SIZES)
    for n in (2, 3, 7, 13, 31, 32, 33, 64, 100, 333, 1000, 4000, 100_000):
        sizes |= {(1, n), (n, 1), (2, n), (n, 2)}
    for h, w in pins:
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                sizes.add((h + dh, w + dw))
        sizes |= {(2 * h, 2 * w), (h // 2, w // 2), (h // 3 + 1, w), (h, w // 3 + 1)}
    rng = random.Random(f"sizes-{tile}")
    for _ in range(150):
        sizes.add((int(round(10 ** rng.uniform(0, 3.5))), int(round(10 ** rng.uniform(0, 3.5)))))
    for _ in range(40):
        thin, long = rng.randint(1, 12), rng.randint(50, 6000)
        sizes.add((thin, long) if rng.random() < 0.5 else (long, thin))
    return sorted(s for s in sizes if min(s) >= 1)


def _tokenizer():
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<image>": 1, "hi": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def _hf_image_processor(tile, pins, **kw):
    return LlavaNextImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                      image_grid_pinpoints=pins, do_pad=True, **kw)


def _hf_processor(tile, patch, pins, strategy, extra):
    return LlavaNextProcessor(image_processor=_hf_image_processor(tile, pins), tokenizer=_tokenizer(),
                              patch_size=patch, vision_feature_select_strategy=strategy,
                              num_additional_image_tokens=extra)


def _tiny_llava_next(tile, patch, pins, strategy="default"):
    torch.manual_seed(0)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=tile, patch_size=patch, hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text_config=LlamaConfig(vocab_size=99, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2),
        image_grid_pinpoints=pins, vision_feature_select_strategy=strategy, vision_feature_layer=-1,
        image_token_index=1)
    return LlavaNextModel(cfg).eval()


def _image(h, w, seed):
    """Noise plus smooth gradients (so resizes are exercised on both)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], axis=-1)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


# ---- geometry vs transformers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,tile,patch,pins", GEOMETRIES, ids=GEOMETRY_IDS)
def test_best_resolution_tiles_and_token_counts_match_transformers(name, tile, patch, pins):
    sizes = _sizes(pins, tile)
    assert len(sizes) >= 250
    clip_proc = _hf_processor(tile, patch, pins, "default", extra=1)   # CLIP: one CLS token, dropped
    siglip_proc = _hf_processor(tile, patch, pins, "full", extra=0)    # SigLIP: no CLS, keep everything
    clip_counts = clip_proc._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
    siglip_counts = siglip_proc._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
    for (h, w), n_clip, n_siglip in zip(sizes, clip_counts, siglip_counts):
        best = anyres.select_best_resolution((h, w), pins)
        assert best == tuple(hf_select_best_resolution((h, w), pins)), (h, w)
        assert anyres.grid_shape((h, w), pins, tile) == (best[0] // tile, best[1] // tile)
        assert anyres.num_tiles((h, w), pins, tile) == image_size_to_num_patches((h, w), pins, tile), (h, w)
        assert anyres.num_image_tokens((h, w), pins, tile, patch, "default", has_cls=True) == n_clip, (h, w)
        assert anyres.num_image_tokens((h, w), pins, tile, patch, "full", has_cls=False) == n_siglip, (h, w)
        g = tile // patch
        without_newline = anyres.num_image_tokens((h, w), pins, tile, patch, "full", has_cls=False,
                                                  image_newline=False)
        # one newline per kept row; extreme ratios (1 x 100000) keep no grid row at all, like transformers
        assert 0 <= n_clip - without_newline <= best[0] // tile * g


def test_processor_counts_are_what_llava_next_processor_inserts():
    """The reference above (_get_num_multimodal_tokens) is what LlavaNextProcessor really inserts."""
    tile, patch, pins = 32, 8, SMALL_PINS
    proc = _hf_processor(tile, patch, pins, "default", extra=1)
    for i, (h, w) in enumerate([(1, 1), (30, 50), (64, 20), (7, 300), (100, 100), (65, 33)]):
        out = proc(text="hi <image> hi", images=_image(h, w, i), return_tensors="pt")
        n = int((out["input_ids"] == proc.image_token_id).sum())
        assert n == anyres.num_image_tokens((h, w), pins, tile, patch, "default"), (h, w)


@pytest.mark.parametrize("name,tile,patch,pins", GEOMETRIES, ids=GEOMETRY_IDS)
def test_pack_image_features_equals_llava_next_model(name, tile, patch, pins):
    model = _tiny_llava_next(tile, patch, pins)
    sizes = _sizes(pins, tile)
    g, dim = tile // patch, 3
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(anyres.num_tiles(s, pins, tile), g * g, dim, generator=gen) for s in sizes]
    newline = torch.randn(dim, generator=gen)
    image_sizes = torch.tensor(sizes)
    with torch.no_grad():
        ref, ref_lens = model.pack_image_features(feats, image_sizes, "default", image_newline=newline)
    ours = anyres.pack_image_features_batch(feats, image_sizes, pins, tile, patch, newline)
    flat = anyres.pack_image_features_batch(torch.cat(feats), sizes, pins, tile, patch, newline)
    for s, r, o, f, n in zip(sizes, ref, ours, flat, ref_lens.tolist()):
        assert torch.equal(o, r), s
        assert torch.equal(f, r), s
        assert o.shape[0] == n == anyres.num_image_tokens(s, pins, tile, patch, "default"), s
    # without a newline: the same vectors minus the newlines, in the same order
    for i in range(0, len(sizes), 7):
        plain = anyres.pack_image_features(feats[i], sizes[i], pins, tile, patch, None)
        assert plain.shape[0] == anyres.num_image_tokens(sizes[i], pins, tile, patch, "default",
                                                         image_newline=False)
        is_newline = (ref[i] == newline).all(dim=1)
        assert torch.equal(plain, ref[i][~is_newline]), sizes[i]


def test_unpad_image_equals_transformers():
    gen = torch.Generator().manual_seed(2)
    rng = random.Random(3)
    for _ in range(300):
        cur = (rng.randint(1, 12) * 4, rng.randint(1, 12) * 4)
        orig = (rng.randint(1, 3000), rng.randint(1, 3000))
        t = torch.randn(2, *cur, generator=gen)
        assert torch.equal(anyres.unpad_image(t, orig), hf_unpad_image(t, orig)), (cur, orig)
        assert torch.equal(anyres.unpad_image(t, torch.tensor(orig)), hf_unpad_image(t, torch.tensor(orig)))


def test_image_features_of_our_tiles_equal_llava_next_get_image_features():
    """Processor + tower + our packing == transformers' LlavaNextModel.get_image_features end to end."""
    tile, patch, pins = 32, 8, SMALL_PINS
    model = _tiny_llava_next(tile, patch, pins)
    images = [_image(h, w, i) for i, (h, w) in enumerate([(20, 70), (64, 64), (1, 90), (45, 17)])]
    batch = AnyResImageProcessor(tile, pins)(images)
    with torch.no_grad():
        ref = model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output
        tiles = torch.cat([pv[:n] for pv, n in zip(batch["pixel_values"], batch["num_tiles"].tolist())])
        hidden = model.vision_tower(tiles, output_hidden_states=True).hidden_states[-1][:, 1:]  # drop CLS
        ours = anyres.pack_image_features_batch(model.multi_modal_projector(hidden), batch["image_sizes"],
                                                pins, tile, patch, model.image_newline)
    for r, o, size in zip(ref, ours, batch["image_sizes"].tolist()):
        assert o.shape[0] == anyres.num_image_tokens(size, pins, tile, patch, "default")
        torch.testing.assert_close(o, r, rtol=0, atol=0)


# ---- fixed resolution and validation -----------------------------------------------------------------------
@pytest.mark.parametrize("pins", [None, []])
def test_fixed_resolution_is_one_tile_without_newline(pins):
    for size in [(1, 1), (336, 336), (480, 640), (1, 5000)]:
        assert anyres.grid_shape(size, pins, 336) == (0, 0)
        assert anyres.num_tiles(size, pins, 336) == 1
        assert anyres.num_image_tokens(size, pins, 336, 14, "default") == 576
        assert anyres.num_image_tokens(size, pins, 336, 14, "full", has_cls=False) == 576
        assert anyres.num_image_tokens(size, pins, 336, 14, "full", has_cls=True) == 577  # CLS kept
        feats = torch.randn(1, 577, 4)
        packed = anyres.pack_image_features(feats, size, pins, 336, 14, torch.randn(4))
        assert torch.equal(packed, feats[0])  # no newline at fixed resolution
    assert anyres.num_image_tokens((10, 10), None, 384, 14, "full", has_cls=False) == 27 * 27  # SigLIP floors


def test_invalid_inputs_raise_clear_errors():
    pins = LLAVA_NEXT_PINS
    with pytest.raises(ValueError, match="positive"):
        anyres.num_tiles((0, 10), pins, 336)
    with pytest.raises(ValueError, match="positive"):
        anyres.select_best_resolution((10, -3), pins)
    with pytest.raises(ValueError, match="pair"):
        anyres.num_tiles((10,), pins, 336)
    with pytest.raises(ValueError, match=r"grid_pinpoints\[1\].*not a multiple of tile_size 336"):
        anyres.num_tiles((10, 10), [[336, 672], [600, 336]], 336)
    with pytest.raises(ValueError, match=r"grid_pinpoints\[0\].*positive"):
        anyres.select_best_resolution((10, 10), [[0, 336]])
    with pytest.raises(ValueError, match="at least one grid pinpoint"):
        anyres.select_best_resolution((10, 10), [])
    for bad_pins in (pins, None):
        with pytest.raises(ValueError, match="tile_size must be a positive integer"):
            anyres.num_tiles((10, 10), bad_pins, 0)
    with pytest.raises(ValueError, match="patch_size 400 is larger than tile_size 336"):
        anyres.num_image_tokens((10, 10), pins, 336, 400, "default")
    with pytest.raises(ValueError, match="unknown select_strategy 'cls'"):
        anyres.num_image_tokens((10, 10), pins, 336, 14, "cls")
    with pytest.raises(ValueError, match="'full' with a CLS tower cannot be packed"):
        anyres.num_image_tokens((10, 10), pins, 336, 14, "full", has_cls=True)
    with pytest.raises(ValueError, match="drops the CLS token, but this tower has none"):
        anyres.num_image_tokens((10, 10), pins, 336, 14, "default", has_cls=False)
    with pytest.raises(ValueError, match=r"needs 5 tiles .* got features for 3"):
        anyres.pack_image_features(torch.zeros(3, 576, 2), (500, 500), pins, 336, 14, None)
    with pytest.raises(ValueError, match="577.*CLS tower cannot be packed"):
        anyres.pack_image_features(torch.zeros(5, 577, 2), (500, 500), pins, 336, 14, None)
    with pytest.raises(ValueError, match=r"image 1: .*needs 5 tiles"):
        anyres.pack_image_features_batch([torch.zeros(3, 576, 2), torch.zeros(3, 576, 2)],
                                         [(336, 672), (500, 500)], pins, 336, 14, None)
    with pytest.raises(ValueError, match="hold 4 tiles but image_sizes need 8"):
        anyres.pack_image_features_batch(torch.zeros(4, 576, 2), [(336, 672), (500, 500)], pins, 336, 14,
                                         None)


# ---- pixels vs transformers' image processors --------------------------------------------------------------
def _pixel_sizes(tile, n, seed):
    rng = random.Random(seed)
    sizes = [(1, 1), (1, 2), (2, 1), (1, 5 * tile), (5 * tile, 1), (3, 400), (400, 3), (tile, tile),
             (tile, 2 * tile), (2 * tile, 2 * tile), (tile - 1, 2 * tile + 1), (3 * tile, tile)]
    while len(sizes) < n:
        sizes.append((int(10 ** rng.uniform(0, 2.6)), int(10 ** rng.uniform(0, 2.6))))
    return sizes


def test_pixels_equal_llava_next_image_processor_small_tiles():
    tile, pins = 32, SMALL_PINS
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    hf = _hf_image_processor(tile, pins, image_mean=list(mean), image_std=list(std))
    ours = AnyResImageProcessor(tile, pins, mean, std)
    for i, (h, w) in enumerate(_pixel_sizes(tile, 100, seed=5)):
        image = _image(h, w, i)
        ref = hf(image, return_tensors="pt")["pixel_values"][0]
        tiles, hw = ours.process(image)
        assert hw == (h, w)
        assert tiles.shape == ref.shape == (anyres.num_tiles((h, w), pins, tile), 3, tile, tile), (h, w)
        assert (tiles - ref).abs().max().item() <= 1e-5, (h, w)


def test_pixels_equal_llava_next_image_processor_at_336():
    hf = _hf_image_processor(336, LLAVA_NEXT_PINS)
    ours = AnyResImageProcessor(336, LLAVA_NEXT_PINS)
    for i, (h, w) in enumerate([(480, 640), (1000, 333), (37, 1200), (336, 1008), (5, 3)]):
        image = _image(h, w, 100 + i)
        ref = hf(image, return_tensors="pt")["pixel_values"][0]
        tiles, _ = ours.process(image)
        assert tiles.shape == ref.shape, (h, w)
        assert (tiles - ref).abs().max().item() <= 1e-5, (h, w)


def test_batch_equals_transformers_batch_with_zero_padding():
    tile, pins = 32, SMALL_PINS
    images = [_image(h, w, i) for i, (h, w) in enumerate([(30, 50), (1, 1), (90, 31), (64, 64), (10, 200)])]
    ref = _hf_image_processor(tile, pins)(images, return_tensors="pt")
    for threads in (1, 3):
        out = AnyResImageProcessor(tile, pins, num_threads=threads)(images)
        assert out["pixel_values"].shape == ref["pixel_values"].shape
        assert (out["pixel_values"] - ref["pixel_values"]).abs().max().item() <= 1e-5
        assert torch.equal(out["image_sizes"], ref["image_sizes"])
        expected = [anyres.num_tiles(s, pins, tile) for s in out["image_sizes"].tolist()]
        assert out["num_tiles"].tolist() == expected
        for pv, n in zip(out["pixel_values"], out["num_tiles"].tolist()):
            assert not pv[n:].any()  # padding tiles are exactly zero


def test_fixed_resolution_pixels_equal_clip_image_processor():
    tile = 32
    hf = CLIPImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile})
    ours = AnyResImageProcessor(tile, [])
    # (7, 12), (45, 29): the long side scales to x.86 / x.66, which transformers truncates
    for i, (h, w) in enumerate([(1, 1), (32, 32), (20, 70), (70, 20), (1, 300), (33, 31), (100, 64), (7, 12),
                                (12, 7), (45, 29)]):
        image = _image(h, w, 200 + i)
        ref = hf(image, return_tensors="pt")["pixel_values"]
        tiles, _ = ours.process(image)
        assert tiles.shape == ref.shape == (1, 3, tile, tile)
        assert (tiles - ref).abs().max().item() <= 1e-5, (h, w)


def test_non_rgb_images_are_converted_like_transformers():
    tile, pins = 32, SMALL_PINS
    rgba = np.dstack([np.asarray(_image(40, 30, 7)), np.random.default_rng(0).integers(0, 256, (40, 30))])
    for image in [Image.fromarray(rgba.astype(np.uint8), "RGBA"), _image(40, 30, 8).convert("L")]:
        ref = _hf_image_processor(tile, pins)(image, return_tensors="pt")["pixel_values"][0]
        tiles, _ = AnyResImageProcessor(tile, pins).process(image)
        assert (tiles - ref).abs().max().item() <= 1e-5, image.mode


def test_from_config_and_processor_errors():
    cfg = ModelConfig()
    cfg.image.size = 32
    cfg.anyres.enabled, cfg.anyres.grid_pinpoints = True, SMALL_PINS
    proc = AnyResImageProcessor.from_config(cfg)
    assert (proc.tile_size, proc.grid_pinpoints, proc.image_mean) == (32, [tuple(p) for p in SMALL_PINS],
                                                                       cfg.image.mean)
    cfg.anyres.enabled = False
    assert AnyResImageProcessor.from_config(cfg).fixed_resolution
    cfg.image.size = None
    with pytest.raises(ValueError, match="image.size is not set"):
        AnyResImageProcessor.from_config(cfg)
    assert AnyResImageProcessor.from_config(cfg, tile_size=48).tile_size == 48
    cfg.image.size, cfg.anyres.enabled, cfg.anyres.grid_pinpoints = 30, True, SMALL_PINS
    with pytest.raises(ValueError, match=r"image.size=30.*not a multiple of tile_size 30"):
        AnyResImageProcessor.from_config(cfg)
    cfg.anyres.grid_pinpoints = []
    with pytest.raises(ValueError, match="anyres.enabled is true but anyres.grid_pinpoints is empty"):
        AnyResImageProcessor.from_config(cfg)
    with pytest.raises(ValueError, match="image 1: expected a PIL image, got ndarray"):
        AnyResImageProcessor(32, SMALL_PINS)([_image(4, 4, 0), np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="image_std must be 3 numbers"):
        AnyResImageProcessor(32, SMALL_PINS, image_std=(1.0, 1.0))
