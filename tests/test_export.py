"""HF export (mllm.app.export): native Llava/LlavaNext, remote code (Q-Former, open_clip), LoRA merge, --verify.

    .venv/bin/python -m pytest -q tests/test_export.py

Every export below is verified the way ``mllm export --verify`` does it: the export is loaded with plain
transformers in a fresh process (one process for all of them, to keep the file fast) and must give the
same fp32 logits (<= 1e-4) and the same 16 greedy tokens as the source model. Portability to transformers
4.57 is asserted through the on-disk layout it needs (see ``mllm/app/export/common.py`` and ``llava.py``);
only 5.x is installed here.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

from tests._tiny import make_batch, tiny_config
from mllm.app.cli import main
from mllm.config import VisionConfig
from mllm.app.export import choose_path, export_model
from mllm.app.export.open_clip_convert import NotConvertible, convert_open_clip_tower
from mllm.app.export.verify import verify_exports
from mllm.model import MultimodalLM

OC_VIT = {"model_name": "ViT-B-16", "vision_cfg": dict(width=32, layers=3, head_width=16, patch_size=8, image_size=32)}
OC_SIGLIP = {"model_name": "ViT-B-16-SigLIP",
             "timm_model_args": dict(embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=32)}
OC_LAYERSCALE = {"model_name": "ViT-B-16", "vision_cfg": dict(OC_VIT["vision_cfg"], ls_init_value=0.5)}


def _open_clip(config, strategy, feature_layer=-2, **kw):
    cfg = tiny_config(**kw)
    cfg.vision = VisionConfig(kind="open_clip", config=config, feature_layer=feature_layer, select_strategy=strategy)
    return cfg


# name -> (config, expected path, export kwargs)
CASES = {
    "clip_fixed_tied": (tiny_config(anyres=False, tie=True), "llava", {}),
    "clip_anyres_untied": (tiny_config(anyres=True, tie=False), "llava_next", {}),
    "siglip_anyres": (tiny_config(anyres=True, tower="hf_siglip"), "llava_next", {}),
    "siglip_fixed_untied": (tiny_config(anyres=False, tower="hf_siglip", tie=False), "llava", {}),
    "clip_layers_list": (None, "llava_next", {}),  # feature_layer [-1, 0], filled in below
    "open_clip_vit": (_open_clip(OC_VIT, "default"), "llava_next", {}),
    "open_clip_timm_siglip": (_open_clip(OC_SIGLIP, "full"), "llava_next", {}),
    "open_clip_layerscale": (_open_clip(OC_LAYERSCALE, "default"), "remote", {}),
    "qformer_fixed": (tiny_config(anyres=False, connector="qformer"), "remote", {}),
    "qformer_anyres_untied": (tiny_config(anyres=True, connector="qformer", tie=False), "remote", {}),
    "mlp_forced_remote": (tiny_config(anyres=True), "remote", {"path": "remote"}),
    "bf16_weights": (tiny_config(anyres=True), "llava_next", {"dtype": torch.bfloat16}),
}
_layers = tiny_config(anyres=True)
_layers.vision.feature_layer = [-1, 0]
CASES["clip_layers_list"] = (_layers, "llava_next", {})
NATIVE = [n for n, (_, p, _) in CASES.items() if p != "remote"]
REMOTE = [n for n, (_, p, _) in CASES.items() if p == "remote"]


def _break_config(src: str, dst: str, filename: str, edit) -> str:
    shutil.copytree(src, dst)
    path = os.path.join(dst, filename)
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return dst


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every case exported and verified in one transformers process; plus two deliberately broken exports."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for i, (name, (cfg, _, kwargs)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = MultimodalLM.build(cfg).eval()
        logs = []
        report = export_model(model, str(root / name), log=logs.append, **kwargs)
        out[name] = {"model": model, "report": report, "dir": str(root / name), "log": logs}
    base = out["clip_anyres_untied"]
    # a wrong feature layer (the model then reads another hidden state) and a wrong token count
    broken = {
        "broken_layer": _break_config(base["dir"], str(root / "broken_layer"), "config.json",
                                      lambda c: c.update(vision_feature_layer=-2)),
        "broken_tokens": _break_config(base["dir"], str(root / "broken_tokens"), "processor_config.json",
                                       lambda c: c.update(num_additional_image_tokens=0)),
    }
    pairs = [(v["model"], v["dir"]) for v in out.values()] + [(base["model"], d) for d in broken.values()]
    results = verify_exports(pairs, check=False)
    for (name, entry), result in zip(list(out.items()) + [(k, {}) for k in broken], results):
        entry["verify"] = result
        out[name] = entry
    return out


def _keys(path):
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        return set(f.keys()), f.metadata()


def _json(path, name):
    with open(os.path.join(path, name)) as f:
        return json.load(f)


# ---- equivalence with the source model -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_source_in_plain_transformers(exports, name):
    entry = exports[name]
    result = entry["verify"]
    assert entry["report"].path == CASES[name][1]
    assert result.input_ids_equal, result.notes
    assert result.template_checked and result.template_equal, result.notes
    assert result.max_abs_diff <= 1e-4, result.summary()
    assert len(result.tokens_ours) == 16 and result.tokens_ours == result.tokens_theirs
    assert result.pixel_max_diff == 0.0  # the exported image processor computes our pixels exactly
    expected_class = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                      "remote": "MllmForConditionalGeneration"}[CASES[name][1]]
    assert result.model_class == expected_class
    assert any(line.startswith("export path: ") for line in entry["log"])


def test_verify_fails_on_a_broken_export(exports):
    layer, tokens = exports["broken_layer"]["verify"], exports["broken_tokens"]["verify"]
    assert not layer.ok and layer.input_ids_equal and layer.max_abs_diff > 1e-3
    assert not tokens.ok and not tokens.input_ids_equal
    assert "tokens" in " ".join(tokens.notes)


# ---- what is on disk (transformers 4.57 portability) -------------------------------------------------------------
@pytest.mark.parametrize("name", NATIVE)
def test_native_layout_is_portable_to_4_57(exports, name):
    entry = exports[name]
    path, model = entry["dir"], entry["model"]
    keys, meta = _keys(path)
    assert meta == {"format": "pt"}
    prefixes = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.linear_1.",
                "multi_modal_projector.linear_2.")
    assert all(k.startswith(prefixes) or k in ("image_newline", "language_model.lm_head.weight") for k in keys), \
        sorted(k for k in keys if not k.startswith(prefixes))[:5]
    cfg = _json(path, "config.json")
    tied = cfg["tie_word_embeddings"]
    assert tied == cfg["text_config"]["tie_word_embeddings"] == model.llm.config.tie_word_embeddings
    assert ("language_model.lm_head.weight" in keys) == (not tied)
    assert ("image_newline" in keys) == (cfg["model_type"] == "llava_next")
    assert "auto_map" not in cfg and not any(f.endswith(".py") for f in os.listdir(path))
    # rope_theta beside 5.x's rope_parameters (4.57 reads only the former)
    assert cfg["text_config"]["rope_theta"] == cfg["text_config"]["rope_parameters"]["rope_theta"]
    assert cfg["image_token_index"] == model.image_token_id
    assert cfg["projector_hidden_act"] == "gelu" and cfg["multimodal_projector_bias"] is True
    strategy = cfg["vision_feature_select_strategy"]
    assert strategy == ("full" if cfg["vision_config"]["model_type"] == "siglip_vision_model" else "default")
    # the exported tower holds exactly the layers the features need; -1 is its last one
    n_layers = cfg["vision_config"]["num_hidden_layers"]
    assert n_layers == max(model.vision_tower.feature_layers)
    assert sum(k.endswith("layer_norm1.weight") and k.startswith("vision_tower.") for k in keys) == n_layers
    if cfg["model_type"] == "llava_next":
        assert cfg["image_grid_pinpoints"] == model.config.anyres.grid_pinpoints  # (height, width)
    else:
        assert cfg["image_seq_length"] == model.num_image_tokens((32, 32))
    pre = _json(path, "preprocessor_config.json")
    assert pre["size"] == {"shortest_edge": 32} and pre["crop_size"] == {"height": 32, "width": 32}
    assert pre["image_mean"] == list(model.config.image.mean) and pre["image_std"] == list(model.config.image.std)
    proc = _json(path, "processor_config.json")
    assert proc["patch_size"] == 8 and proc["vision_feature_select_strategy"] == strategy
    assert proc["num_additional_image_tokens"] == (1 if model.geometry.has_cls else 0)
    tok = _json(path, "tokenizer_config.json")
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok["model_input_names"] == ["input_ids", "attention_mask"]
    assert tok["extra_special_tokens"] == {"image_token": "<image>"} and "<image>" in tok["additional_special_tokens"]
    added = {t["content"]: t for t in _json(path, "tokenizer.json")["added_tokens"]}
    assert added["<image>"]["special"] and added["<image>"]["id"] == model.image_token_id
    gen = _json(path, "generation_config.json")
    assert gen["eos_token_id"] == model.tokenizer.eos_token_id and gen["do_sample"] is False


def test_tower_layers_list_and_bf16_config(exports):
    cfg = _json(exports["clip_layers_list"]["dir"], "config.json")
    assert cfg["vision_feature_layer"] == [-1, -3]  # [-1, 0] of a 2-layer tower, relative to the 2 kept layers
    assert _json(exports["bf16_weights"]["dir"], "config.json")["torch_dtype"] == "bfloat16"
    with safe_open(os.path.join(exports["bf16_weights"]["dir"], "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("multi_modal_projector.linear_1.weight").dtype == torch.bfloat16


def test_chat_template_is_ours(exports):
    from data_pipelines.templates import get_template

    with open(os.path.join(exports["clip_anyres_untied"]["dir"], "chat_template.jinja")) as f:
        assert f.read() == get_template("vicuna_v1").jinja()


def test_native_export_loads_every_weight_without_remote_code(exports):
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    for name, cls in (("clip_anyres_untied", LlavaNextForConditionalGeneration),
                      ("siglip_fixed_untied", LlavaForConditionalGeneration)):
        _, info = cls.from_pretrained(exports[name]["dir"], output_loading_info=True, trust_remote_code=False)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


# ---- remote code -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REMOTE)
def test_remote_export_layout_and_reason(exports, name):
    entry = exports[name]
    path, report = entry["dir"], entry["report"]
    cfg = _json(path, "config.json")
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForImageTextToText", "AutoModelForCausalLM",
                                    "AutoProcessor"}
    for f in ("configuration_mllm.py", "modeling_mllm.py", "processing_mllm.py"):
        assert os.path.isfile(os.path.join(path, f))
    assert _json(path, "processor_config.json")["auto_map"]["AutoProcessor"] == "processing_mllm.MllmProcessor"
    keys, _ = _keys(path)
    assert "language_model.lm_head.weight" in keys  # written even when tied: loading never depends on tying
    if name.startswith("qformer"):
        assert "qformer" in report.reason and cfg["connector"] == "qformer"
        assert cfg["num_query_tokens"] == 4 and any(k.startswith("connector.qformer.") for k in keys)
    if name == "open_clip_layerscale":
        assert "layer scale" in report.reason and cfg["vision_backend"] == "open_clip"


def test_remote_export_needs_trust_remote_code(exports):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = exports["qformer_fixed"]["dir"]
    for load in (AutoModelForImageTextToText.from_pretrained, AutoConfig.from_pretrained,
                 AutoProcessor.from_pretrained):
        with pytest.raises(ValueError, match="custom code"):
            load(path, trust_remote_code=False)


# ---- open_clip conversion ----------------------------------------------------------------------------------------
def test_open_clip_conversion_matches_or_says_why():
    ok = MultimodalLM.build(_open_clip(OC_VIT, "full", feature_layer=[-1, 1])).vision_tower
    conv = convert_open_clip_tower(ok)  # checks the features numerically itself
    assert conv.vision_config["model_type"] == "clip_vision_model" and conv.vision_config["hidden_act"] == "gelu"
    assert conv.num_layers == 3 and conv.feature_layers == [3, 1]
    bad = MultimodalLM.build(_open_clip(OC_LAYERSCALE, "default")).vision_tower
    with pytest.raises(NotConvertible, match="layer scale"):
        convert_open_clip_tower(bad)


# ---- LoRA --------------------------------------------------------------------------------------------------------
def test_lora_trained_checkpoint_exports_merged_weights(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=True))
    base_q = model.llm.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(model, [("USER: <image>\nWhat is it? ASSISTANT: a red circle", [(40, 60)])])
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        lora_logits = model(**batch).logits
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    model.save_pretrained(str(ckpt))  # base weights + llm_adapter/
    assert (ckpt / "llm_adapter" / "adapter_config.json").is_file()

    assert main(["export", "--model", str(ckpt), "--out", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "merged the LLM's LoRA adapter" in printed and "greedy 16 tokens identical: yes" in printed
    keys, _ = _keys(str(out))
    assert not any("lora" in k or "base_layer" in k for k in keys)
    with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
        merged_q = f.get_tensor("language_model.model.layers.0.self_attn.q_proj.weight")
    assert not torch.allclose(merged_q, base_q)  # the adapter really moved the weights
    # the exported (merged) weights compute what the LoRA-wrapped model computed
    from mllm.app.export.common import load_for_export

    merged = load_for_export(str(ckpt))
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, lora_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.llm.model.layers[0].self_attn.q_proj.weight, merged_q)


# ---- choices and errors ------------------------------------------------------------------------------------------
def test_path_choice_and_errors(tmp_path):
    qformer = MultimodalLM.build(tiny_config(connector="qformer"))
    with pytest.raises(ValueError, match="cannot export natively: connector 'qformer'"):
        choose_path(qformer, "native")
    with pytest.raises(ValueError, match="unknown export path 'llava'"):
        choose_path(qformer, "llava")
    no_newline = tiny_config(anyres=True)
    no_newline.anyres.image_newline = False
    route, _, reason = choose_path(MultimodalLM.build(no_newline))
    assert route == "remote" and "image_newline" in reason
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty"):
        export_model(qformer, str(tmp_path / "full"), log=None)
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
