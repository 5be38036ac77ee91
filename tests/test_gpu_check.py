"""FLOP accounting, MFU, roofline (mllm.flops) by hand counts, and benchmarks/gpu_check.py end to end on CPU.

The CUDA-only paths (ZeRO-3, bitsandbytes 4-bit on the GPU, peak memory, MFU against a real peak) are the
``gpu``-marked tests at the bottom.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from torch import nn

from mllm import flops
from mllm.presets import VICUNA_7B, get_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY_LLAMA = dict(model_type="llama", hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=16, vocab_size=10, tie_word_embeddings=False)
# per block: q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192, MLP 3 x 8x16 = 384; 2 blocks + lm_head 8x10
TOY_MATMUL = 2 * (192 + 384) + 80


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "benchmarks", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def test_decoder_weights_by_hand_and_as_built():
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = flops.decoder_shape(TOY_LLAMA)
    assert (shape.head_dim, shape.kv_heads, shape.gated) == (4, 1, True)
    assert shape.matmul_params == TOY_MATMUL == 1232
    cfg = dict(TOY_LLAMA)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    assert _linear_weights(model) == TOY_MATMUL
    assert shape.kv_bytes_per_token(2) == 2 * 2 * 1 * 4 * 2
    # OPT's MLP is two matrices, and its width is ffn_dim
    opt = flops.decoder_shape(dict(model_type="opt", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   ffn_dim=16, vocab_size=10))
    assert not opt.gated and opt.matmul_params == 4 * 64 + 2 * 128 + 80


def test_vicuna_7b_weights():
    shape = flops.decoder_shape(VICUNA_7B)
    # 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 4096 x 32000: 6.74B parameters less the embedding table and norms
    assert shape.matmul_params == 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008) + 4096 * 32000 == 6_607_077_376


def test_the_tiny_preset_as_built_matches_the_accounting():
    from mllm.model import MultimodalLM

    model = MultimodalLM.build(get_preset("tiny"))
    llm = flops.decoder_shape(model.config.llm.config, vocab=model.llm.get_output_embeddings().weight.shape[0])
    assert llm.matmul_params == _linear_weights(model.llm)  # GQA (6 heads, 2 KV heads) and tied LM head
    tower = flops.tower_shape(model.config.vision)
    assert tower.layers == len(model.vision_tower.model.encoder.layers)  # feature_layer -2: the last is cut
    assert tower.matmul_params == _linear_weights(model.vision_tower.model.encoder)
    assert tower.tokens_per_tile == model.vision_tower.num_tokens + 1  # + CLS, dropped after the tower
    conv = model.vision_tower.model.embeddings.patch_embedding
    assert tower.patch_params == conv.weight.numel()


def test_llava_next_tower_runs_23_of_24_layers():
    tower = flops.tower_shape(get_preset("llava-next-7b").vision)
    assert (tower.layers, tower.tokens_per_tile, tower.cls) == (23, 577, True)
    assert tower.matmul_params == 23 * (4 * 1024 ** 2 + 2 * 1024 * 4096)


def test_step_flops_by_hand():
    llm = flops.decoder_shape(TOY_LLAMA)
    tower = flops.TowerShape(layers=1, hidden=4, intermediate=8, image_size=8, patch_size=4, cls=True)
    f = flops.step_flops(llm, [3, 5], tower=tower, tiles=2, connector_params=100)
    assert flops.causal_pairs([3, 5]) == 6 + 15
    assert f["llm"] == 3 * 2 * 1232 * 8
    assert f["llm_attention"] == 3 * 4 * 2 * 8 * 21  # layers 2, heads x head_dim 8, 21 causal pairs
    # tower: 5 tokens per tile (4 patches + CLS); blocks 4*16 + 2*32 = 128 weights, patch conv 3*4*4*4 = 192
    assert f["tower"] == 3 * 2 * 2 * (128 * 5 + 192 * 4)
    assert f["tower_attention"] == 3 * 4 * 1 * 4 * 2 * 25
    assert f["connector"] == 3 * 2 * 100 * 2 * 4
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    q = flops.step_flops(llm, [3, 5], tower=tower, tiles=2, connector_params=100, passes=flops.TRAIN_QLORA,
                         extra_trained_params=7)
    assert q["llm"] == 2 * 2 * 1232 * 8 and q["tower"] == f["tower"] / 3 and q["adapters"] == 3 * 2 * 7 * 8
    # packing two sequences into one row does not add attention work between them
    assert flops.step_flops(llm, [8])["llm_attention"] > f["llm_attention"]


def test_mfu_roofline_specs_and_fit():
    assert flops.mfu(989e12, 2.0, 989.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        flops.mfu(1.0, 0.0, 989.0)
    vicuna = flops.decoder_shape(VICUNA_7B)
    per_token = flops.decode_bytes_per_token(vicuna, context=1000)
    assert per_token == (6_607_077_376 + 4096) * 2 + 2 * 32 * 32 * 128 * 2 * 1000
    assert flops.roofline_tokens_per_s(per_token, 4.8e12) == pytest.approx(349.4, abs=0.1)
    assert flops.gpu_specs("NVIDIA H200") == (989.0, 4800.0)
    assert flops.gpu_specs("NVIDIA GH200 480GB") == (989.0, 4000.0)
    assert flops.gpu_specs("NVIDIA H100 80GB HBM3") == (989.0, 3350.0)
    assert flops.gpu_specs("NVIDIA H100 PCIe") == (756.0, 2000.0)
    assert flops.gpu_specs("NVIDIA L40S") == (362.0, 864.0)
    assert flops.gpu_specs("NVIDIA A100-SXM4-40GB") == (312.0, 1555.0)
    assert flops.gpu_specs("a toaster") is None
    assert flops.fit_layers(100, 20, 10, 32) == 8
    assert flops.fit_layers(1000, 20, 10, 32) == 32
    assert flops.fit_layers(10, 20, 10, 32) == 0


def test_arguments():
    gc = _script()
    a = gc.parse_args([])
    assert a.preset == "llava-next-7b" and a.parts == ["train", "qlora", "decode"] and a.steps == 3
    assert a.isolate == torch.cuda.is_available()
    d = gc.parse_args(["--dry-run", "--new-tokens", "64"])
    assert (d.preset, d.device, d.steps, d.new_tokens, d.isolate) == ("tiny", "cpu", 1, 8, False)
    assert gc.parse_args(["--dry-run", "--peak-tflops", "500"]).peak_tflops == 500
    assert gc.device_specs(gc.parse_args(["--dry-run", "--peak-tflops", "500", "--hbm-gbps", "2000"])) == {
        "name": "cpu", "peak_tflops": 500, "hbm_gbps": 2000, "source": "flags"}
    for bad in (["--parts", "bench"], ["--batch-size", "0"], ["--new-tokens", "1"], ["--zero", "2"]):
        with pytest.raises(SystemExit):
            gc.parse_args(bad)


def test_dry_run_end_to_end(tmp_path, one_torch_thread):
    """Setup, both layouts, accounting, decoding of the export and the summary table, on the tiny preset."""
    gc = _script()
    out = tmp_path / "check.json"
    rc = gc.main(["--dry-run", "--batch-size", "2", "--peak-tflops", "100",
                  "--hbm-gbps", "100", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    train, qlora, decode = (data["results"][k] for k in ("train", "qlora", "decode"))
    assert not [r["error"] for r in (train, qlora, decode) if "error" in r]
    padded, packed = train["padded"], train["packed"]
    assert padded["real_tokens"] == packed["real_tokens"] > 0  # the same samples in both layouts
    assert 0 <= packed["pad_fraction"] < padded["pad_fraction"] < 1
    assert train["model_flops"] > 0 and train["optimizer"] == "AdamW" and train["attention"] == "sdpa"
    assert train["packed_attention"] == "sdpa_packed"  # packed rows attend per sample, no dense mask
    # QLoRA (bitsandbytes' CPU backend here): LoRA + connector train, far fewer FLOPs per token than full
    assert 0 < qlora["trainable_m"] < train["params_b"] * 1e3 / 2
    assert qlora["padded"]["real_tokens"] == padded["real_tokens"]
    assert train["model_flops"] / 3 < qlora["padded"]["model_flops"] < train["model_flops"]
    assert decode["source"] == "export" and decode["tokens_per_s"] > 0 and decode["prompt_tokens"] > 1
    text = "\n".join(data["summary"])
    assert flops.FORMULA in text and "packed/padded" in text and "% of roofline" in text
    assert "MFU" in text and "%" in text.split("train  | padded")[1].split("\n")[0]


def test_a_part_past_its_limit_is_a_failed_row(tmp_path, capsys):
    """Each part runs under its own limit, in this process (an alarm) or in a child process (killed)."""
    gc = _script()
    out = tmp_path / "check.json"
    rc = gc.main(["--dry-run", "--parts", "train", "--timeout-train", "1", "--json", str(out)])
    assert rc == 1
    assert json.loads(out.read_text())["results"]["train"]["error"] == "TimeoutError: ran past its 1s limit"
    rc = gc.main(["--dry-run", "--isolate", "--parts", "decode", "--timeout-decode", "1", "--json", str(out)])
    assert rc == 1
    assert json.loads(out.read_text())["results"]["decode"]["error"] == "ran past its 1s limit"
    assert "FAILED: ran past its 1s limit" in capsys.readouterr().out


# ---- CUDA-only paths ---------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_train_zero3_qlora_decode_on_a_small_shape(tmp_path):
    """The device paths on the tiny preset: ZeRO-3 (DeepSpeed on one GPU), 4-bit QLoRA, decoding the export."""
    gc = _script()
    out = tmp_path / "check.json"
    gc.main(["--preset", "tiny", "--inline", "--zero", "3", "--steps", "2", "--json", str(out)])
    res = json.loads(out.read_text())["results"]
    assert all("error" not in r for r in res.values()), res
    assert res["train"]["optimizer"].startswith("ZeRO-3")
    for part, layout in (("train", "padded"), ("train", "packed"), ("qlora", "padded")):
        assert res[part][layout]["peak_gib"] > 0
    assert res["decode"]["peak_gib"] > 0 and res["decode"]["tokens_per_s"] > 0
    # the accounting reads the architecture before ZeRO-3 partitions the weights (a partitioned one has 0 elements)
    gc.main(["--preset", "tiny", "--inline", "--zero", "none", "--steps", "2", "--parts", "train", "--json", str(out)])
    plain = json.loads(out.read_text())["results"]["train"]
    assert plain["optimizer"] == "AdamW" and plain["model_flops"] == res["train"]["model_flops"]


@pytest.mark.gpu
def test_gpu_isolated_parts_report_each_result(tmp_path):
    gc = _script()
    out = tmp_path / "check.json"
    gc.main(["--preset", "tiny", "--isolate", "--parts", "decode", "--json", str(out)])
    res = json.loads(out.read_text())["results"]["decode"]
    assert "error" not in res and res["tokens_per_s"] > 0
