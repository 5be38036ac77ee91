"""Vision towers (mllm.vision): HF CLIP / SigLIP and open_clip (own ViT + timm SigLIP trunk), tiny and offline.

    .venv/bin/python -m pytest -q tests/test_vision_towers.py
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel)

from mllm.config import VisionConfig
from mllm.vision import VISION_TOWERS, build_vision_tower

HF = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
          patch_size=8)
OC_VIT = {"model_name": "ViT-B-16", "vision_cfg": dict(width=32, layers=3, head_width=16, patch_size=8, image_size=32)}
OC_SIGLIP = {"model_name": "ViT-B-16-SigLIP",
             "timm_model_args": dict(embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=32)}
TINY_TEXT = dict(context_length=8, vocab_size=16, width=16, heads=2, layers=1)
GRID = (32 // 8) ** 2
HF_CLASSES = {"hf_clip": (CLIPVisionConfig, CLIPVisionModel), "hf_siglip": (SiglipVisionConfig, SiglipVisionModel)}


def pixels(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tower(kind, config, feature_layer=-2, select_strategy="default", name_or_path=None, seed=0):
    torch.manual_seed(seed)
    return build_vision_tower(VisionConfig(kind=kind, name_or_path=name_or_path, config=dict(config),
                                           feature_layer=feature_layer, select_strategy=select_strategy)).eval()


def hf_reference(t):
    """A full, untruncated HF model carrying the tower's weights; the missing keys must be exactly the pruned ones."""
    config_cls, model_cls = HF_CLASSES[t.kind]
    arch = {k: v for k, v in t.arch_config().items() if k not in ("image_mean", "image_std")}
    ref = model_cls(config_cls(**arch)).eval()
    res = ref.load_state_dict({k[len("model."):]: v for k, v in t.state_dict().items()}, strict=False)
    return ref, set(res.missing_keys), set(res.unexpected_keys)


# ---- registry --------------------------------------------------------------------------------------------------
def test_registry_keys_and_unknown_kind():
    assert VISION_TOWERS.keys() == ["hf_clip", "hf_siglip", "open_clip"]
    with pytest.raises(ValueError, match="known: hf_clip, hf_siglip, open_clip"):
        build_vision_tower(VisionConfig(kind="clip", config=dict(HF)))


# ---- shapes ------------------------------------------------------------------------------------------------------
CASES = [("hf_clip", HF, "default", GRID), ("hf_clip", HF, "full", GRID + 1), ("hf_siglip", HF, "full", GRID),
         ("open_clip", OC_VIT, "default", GRID), ("open_clip", OC_VIT, "full", GRID + 1),
         ("open_clip", OC_SIGLIP, "full", GRID)]


@pytest.mark.parametrize("kind,config,strategy,tokens", CASES)
def test_shapes_every_kind_and_strategy(kind, config, strategy, tokens):
    t = tower(kind, config, select_strategy=strategy)
    out = t(pixels(3))
    assert out.shape == (3, tokens, 32)
    assert (t.num_tokens, t.hidden_size, t.image_size, t.patch_size) == (tokens, 32, 32, 8)
    assert t.has_cls == (kind == "hf_clip" or config is OC_VIT)
    two = tower(kind, config, feature_layer=[-1, 0, 1], select_strategy=strategy)
    assert two(pixels(3)).shape == (3, tokens, 96) and two.hidden_size == 96


@pytest.mark.parametrize("kind,config", [("hf_clip", HF), ("open_clip", OC_VIT)])
def test_full_keeps_cls_default_drops_it(kind, config):
    full = tower(kind, config, select_strategy="full")(pixels())
    default = tower(kind, config, select_strategy="default")(pixels())
    assert full.shape[1] == default.shape[1] + 1
    torch.testing.assert_close(full[:, 1:], default)


@pytest.mark.parametrize("kind,config", [("hf_siglip", HF), ("open_clip", OC_SIGLIP)])
def test_default_strategy_without_cls_raises(kind, config):
    with pytest.raises(ValueError, match="no CLS token.*Use select_strategy 'full'"):
        tower(kind, config, select_strategy="default")


def test_bad_feature_layer_and_strategy_raise():
    with pytest.raises(ValueError, match="out of range for a tower with 3 layers"):
        tower("hf_clip", HF, feature_layer=4)
    with pytest.raises(ValueError, match="out of range"):
        tower("open_clip", OC_VIT, feature_layer=-5)
    with pytest.raises(ValueError, match="non-empty list"):
        tower("hf_clip", HF, feature_layer=[])
    with pytest.raises(ValueError, match="select_strategy 'cls_patch' is not one of default, full"):
        tower("hf_clip", HF, select_strategy="cls_patch")
    with pytest.raises(ValueError, match=r"unknown CLIPVisionConfig field\(s\) \['num_hiden_layers'\]"):
        tower("hf_clip", dict(HF, num_hiden_layers=2))


# ---- HF towers against HF's own hidden_states --------------------------------------------------------------------
@pytest.mark.parametrize("kind,strategy", [("hf_clip", "default"), ("hf_siglip", "full")])
def test_hf_layer_minus_2_matches_hidden_states_and_last_layer_is_pruned(kind, strategy):
    t = tower(kind, HF, feature_layer=-2, select_strategy=strategy)
    ref, missing, unexpected = hf_reference(t)
    # only the unused last layer, post-layernorm and (SigLIP) pooling head were dropped
    assert not unexpected
    assert missing == {k for k in ref.state_dict() if k.startswith(("encoder.layers.2.", "post_layernorm.", "head."))}
    assert len(t.model.encoder.layers) == 2 and t.model.post_layernorm is None
    x = pixels()
    with torch.no_grad():
        hs = ref(x, output_hidden_states=True).hidden_states
        want = hs[-2][:, 1:] if kind == "hf_clip" else hs[-2]
        torch.testing.assert_close(t(x), want, rtol=0, atol=0)


def test_hf_layer_list_concatenates_in_order():
    t = tower("hf_clip", HF, feature_layer=[-1, 0, 2], select_strategy="full")
    ref, missing, _ = hf_reference(t)
    assert all(k.startswith("post_layernorm") for k in missing)  # -1 keeps every layer
    x = pixels()
    with torch.no_grad():
        hs = ref(x, output_hidden_states=True).hidden_states
        torch.testing.assert_close(t(x), torch.cat([hs[3], hs[0], hs[2]], dim=-1), rtol=0, atol=0)


def test_hf_normalisation_defaults():
    assert tower("hf_clip", HF).image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    s = tower("hf_siglip", HF, select_strategy="full")
    assert s.image_mean == (0.5, 0.5, 0.5) and s.image_std == (0.5, 0.5, 0.5)


# ---- HF from_pretrained (local directories) ----------------------------------------------------------------------
@pytest.mark.parametrize("kind,strategy", [("hf_clip", "default"), ("hf_siglip", "full")])
def test_hf_from_local_dir_equals_source(tmp_path, kind, strategy):
    config_cls, model_cls = HF_CLASSES[kind]
    torch.manual_seed(1)
    src = model_cls(config_cls(**HF)).eval()
    src.save_pretrained(tmp_path)
    t = tower(kind, {}, feature_layer=-2, select_strategy=strategy, name_or_path=str(tmp_path), seed=7)
    x = pixels()
    with torch.no_grad():
        hs = src(x, output_hidden_states=True).hidden_states
        torch.testing.assert_close(t(x), hs[-2][:, 1:] if kind == "hf_clip" else hs[-2], rtol=0, atol=0)
    # the architecture came from the directory, and a matching `config` is accepted
    assert t.arch_config()["num_hidden_layers"] == 3
    tower(kind, HF, select_strategy=strategy, name_or_path=str(tmp_path))


@pytest.mark.parametrize("kind", ["hf_clip", "hf_siglip"])
def test_hf_from_full_dual_encoder_checkpoint(tmp_path, kind):
    # hub CLIP / SigLIP repos hold the whole dual encoder; the vision half must load without re-init
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    torch.manual_seed(2)
    if kind == "hf_clip":
        full = CLIPModel(CLIPConfig(vision_config=HF, text_config=dict(text, bos_token_id=0, eos_token_id=1,
                                                                       pad_token_id=1), projection_dim=16))
    else:
        full = SiglipModel(SiglipConfig(vision_config=HF, text_config=dict(text, bos_token_id=0, eos_token_id=1,
                                                                           pad_token_id=1)))
    full.eval().save_pretrained(tmp_path)
    t = tower(kind, {}, feature_layer=-1, select_strategy="full", name_or_path=str(tmp_path))
    x = pixels()
    with torch.no_grad():
        want = full.vision_model(x, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(t(x), want, rtol=0, atol=0)


def test_hf_from_dir_errors_and_preprocessor_norm(tmp_path):
    torch.manual_seed(3)
    src = CLIPVisionModel(CLIPVisionConfig(**HF))
    sd = src.state_dict()
    del sd["encoder.layers.0.mlp.fc1.weight"]
    src.save_pretrained(tmp_path, state_dict=sd)
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vision.config.hidden_size=64 but .* has hidden_size=32"):
        tower("hf_clip", dict(HF, hidden_size=64), name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"weights missing for \['encoder.layers.0.mlp.fc1.weight'\]"):
        tower("hf_clip", {}, name_or_path=str(tmp_path))
    # the same weight is fine when it belongs to a pruned layer: feature layer 0 keeps no encoder layer
    t = tower("hf_clip", {}, feature_layer=0, name_or_path=str(tmp_path))
    assert t.image_mean == pytest.approx((0.1, 0.2, 0.3)) and t.image_std == pytest.approx((0.4, 0.5, 0.6))
    assert t.arch_config()["image_mean"] == pytest.approx([0.1, 0.2, 0.3])


# ---- open_clip towers against manual block-by-block computation -------------------------------------------------
def manual_open_clip_vit(visual, x, upto):
    """Hidden states 0..upto of open_clip's VisionTransformer, step by step."""
    h = visual.conv1(x).flatten(2).transpose(1, 2)  # (N, grid**2, C)
    cls = visual.class_embedding.expand(h.shape[0], 1, -1)
    h = visual.ln_pre(torch.cat([cls, h], dim=1) + visual.positional_embedding)  # (N, 1 + grid**2, C)
    states = [h]
    for blk in list(visual.transformer.resblocks)[:upto]:
        h = blk(h)
        states.append(h)
    return states


def manual_timm_siglip(trunk, x, upto):
    h = trunk.patch_embed(x)  # (N, grid**2, C); SigLIP: no class token
    h = trunk.norm_pre(h + trunk.pos_embed)
    states = [h]
    for blk in list(trunk.blocks)[:upto]:
        h = blk(h)
        states.append(h)
    return states


def test_open_clip_vit_feature_layers_match_manual_blocks():
    t = tower("open_clip", OC_VIT, feature_layer=-2, select_strategy="default")
    # pruned: the last block, ln_post and the projection are gone
    assert len(t.visual.transformer.resblocks) == 2 and t.visual.proj is None
    assert not any(k.startswith("visual.ln_post") or k == "visual.proj" for k in t.state_dict())
    x = pixels()
    with torch.no_grad():
        states = manual_open_clip_vit(t.visual, x, 2)
        torch.testing.assert_close(t(x), states[2][:, 1:])
        both = tower("open_clip", OC_VIT, feature_layer=[0, -1], select_strategy="full")
        states = manual_open_clip_vit(both.visual, x, 3)
        torch.testing.assert_close(both(x), torch.cat([states[0], states[3]], dim=-1))


def test_open_clip_siglip_feature_layers_match_manual_blocks():
    t = tower("open_clip", OC_SIGLIP, feature_layer=[-2, 0], select_strategy="full")
    trunk = t.visual.trunk
    assert t.has_cls is False and trunk.num_prefix_tokens == 0
    assert len(trunk.blocks) == 2 and trunk.attn_pool is None
    assert t.image_mean == (0.5, 0.5, 0.5)  # from open_clip's SigLIP pretrained config, not OpenAI's
    x = pixels()
    with torch.no_grad():
        states = manual_timm_siglip(trunk, x, 2)
        torch.testing.assert_close(t(x), torch.cat([states[2], states[0]], dim=-1))


def test_open_clip_config_errors_and_normalisation():
    with pytest.raises(ValueError, match="model_name is required"):
        tower("open_clip", {})
    with pytest.raises(ValueError, match="not an open_clip model; close: .*'ViT-B-16'"):
        tower("open_clip", dict(OC_VIT, model_name="ViT-B-61"))
    with pytest.raises(ValueError, match=r"unknown open_clip key\(s\) \['width'\]"):
        tower("open_clip", dict(OC_VIT, width=32))
    with pytest.raises(ValueError, match="different normalisations"):
        tower("open_clip", dict(OC_VIT, model_name="ViT-L-14"))
    t = tower("open_clip", dict(OC_VIT, model_name="ViT-L-14", pretrained_tag="laion2b_s32b_b82k"))
    assert t.image_mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="must be a local checkpoint file"):
        tower("open_clip", OC_VIT, name_or_path="/nonexistent/open_clip_model.safetensors")


# ---- open_clip local weights files -------------------------------------------------------------------------------
def open_clip_source(config, tmp_path):
    """The whole, unpruned open_clip model for a tiny config, built with open_clip's own public API."""
    import open_clip
    from open_clip.factory import get_model_config

    base = get_model_config(config["model_name"])
    vision_cfg = dict(base["vision_cfg"], **config.get("vision_cfg", {}))
    if "timm_model_args" in config:
        (tmp_path / "timm").mkdir()
        (tmp_path / "timm" / "config.json").write_text(json.dumps(
            {"architecture": vision_cfg["timm_model_name"], "model_args": config["timm_model_args"],
             "pretrained_cfg": {}}))
        vision_cfg.update(timm_model_name=f"local-dir:{tmp_path / 'timm'}",
                          image_size=config["timm_model_args"]["img_size"])
    return open_clip.create_model(config["model_name"], vision_cfg=vision_cfg,
                                  text_cfg=dict(base["text_cfg"], **TINY_TEXT)).eval()


@pytest.mark.parametrize("config,strategy", [(OC_VIT, "default"), (OC_SIGLIP, "full")])
def test_open_clip_local_safetensors_round_trip(tmp_path, config, strategy):
    torch.manual_seed(4)
    src = open_clip_source(config, tmp_path)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    t = tower("open_clip", dict(config, text_cfg=TINY_TEXT), feature_layer=-2, select_strategy=strategy,
              name_or_path=str(path), seed=5)
    x = pixels()
    with torch.no_grad():
        if "timm_model_args" in config:
            want = manual_timm_siglip(src.visual.trunk, x, 2)[2]
        else:
            want = manual_open_clip_vit(src.visual, x, 2)[2][:, 1:]
        torch.testing.assert_close(t(x), want, rtol=0, atol=0)
    src_visual = src.visual.state_dict()
    for k, v in t.state_dict().items():
        torch.testing.assert_close(v, src_visual[k[len("visual."):]], rtol=0, atol=0)
    # open_clip loads the file strictly: a text tower that does not match the file is an error
    with pytest.raises(ValueError, match="could not build"):
        tower("open_clip", config, select_strategy=strategy, name_or_path=str(path))


# ---- arch_config round trip --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,config,strategy,layer", [
    ("hf_clip", HF, "default", -2), ("hf_siglip", HF, "full", [0, -1]),
    ("open_clip", OC_VIT, "full", -2), ("open_clip", OC_SIGLIP, "full", [-1, 1])])
def test_arch_config_round_trip_loads_strictly(kind, config, strategy, layer):
    a = tower(kind, config, feature_layer=layer, select_strategy=strategy, seed=8)
    arch = json.loads(json.dumps(a.arch_config()))  # as written into mllm_config.json
    b = tower(kind, arch, feature_layer=layer, select_strategy=strategy, seed=9)
    assert list(a.state_dict()) == list(b.state_dict())
    x = pixels()
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # different seeds: the comparison below means something
        b.load_state_dict(a.state_dict(), strict=True)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert (b.image_mean, b.image_std, b.num_tokens, b.hidden_size) == (a.image_mean, a.image_std, a.num_tokens,
                                                                        a.hidden_size)


# ---- gradient checkpointing -------------------------------------------------------------------------------------
def _first_mlp(t):
    if hasattr(t, "model"):  # HF
        return t.model.encoder.layers[0].mlp
    blocks = t.visual.trunk.blocks if hasattr(t.visual, "trunk") else t.visual.transformer.resblocks
    return blocks[0].mlp


@pytest.mark.parametrize("kind,config,strategy", [("hf_clip", HF, "default"), ("hf_siglip", HF, "full"),
                                                  ("open_clip", OC_VIT, "default"),
                                                  ("open_clip", OC_SIGLIP, "full")])
def test_gradient_checkpointing_same_gradients(kind, config, strategy):
    plain = tower(kind, config, feature_layer=[-2, -1], select_strategy=strategy).train()
    ckpt = tower(kind, plain.arch_config(), feature_layer=[-2, -1], select_strategy=strategy).train()
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    ckpt.gradient_checkpointing_enable()
    calls = {"plain": 0, "ckpt": 0}
    # a pre-hook: checkpoint's early-stopping recompute enters the MLP but may not finish it
    _first_mlp(plain).register_forward_pre_hook(lambda *a: calls.__setitem__("plain", calls["plain"] + 1))
    _first_mlp(ckpt).register_forward_pre_hook(lambda *a: calls.__setitem__("ckpt", calls["ckpt"] + 1))
    x = pixels()
    weights = torch.randn(plain.num_tokens, plain.hidden_size, generator=torch.Generator().manual_seed(1))
    for t in (plain, ckpt):
        (t(x) * weights).sum().backward()
    assert calls == {"plain": 1, "ckpt": 2}  # checkpointing really recomputed the block in backward
    grads = dict(ckpt.named_parameters())
    n = 0
    for name, p in plain.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6)
        n += 1
    assert n > 10
