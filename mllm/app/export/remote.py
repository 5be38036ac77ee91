"""Models without a native transformers class -> transformers checkpoints with their own modeling code.

    from mllm.app.export.remote import export_remote
    export_remote(model, "out/", conv=conv_or_None)     # conv: an HF-converted tower, or None for open_clip

Q-Former connectors, towers with no exact transformers counterpart (through open_clip) and, later, extra
heads take this path. The directory holds ``configuration_mllm.py``, ``modeling_mllm.py``,
``processing_mllm.py`` (+ ``anyres_mllm.py``, ``vision_open_clip.py``) copied from ``remote_code/``, and
``auto_map`` entries for AutoConfig, AutoModelForImageTextToText, AutoModelForCausalLM and AutoProcessor, so
it loads with ``trust_remote_code=True`` (and only then) in transformers 4.57 and 5.x::

    AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)

The model is assembled from transformers parts only: an ``AutoModel`` vision tower from the vision config
(4.x key layout, like the native path), our connector under the same parameter names (``connector.*``:
``linear_{1,2}`` or ``query_tokens`` / ``qformer`` (``Blip2QFormerModel``) / ``projection``), ``image_newline``,
and an ``AutoModelForCausalLM`` (``language_model.*``, lm_head always written so tying never matters).

A model with an image-generation head (``gen_head``) takes this path too: ``extra_heads["gen"]`` holds the
head's config, its weights keep their names under ``gen_head.*``, and ``gen_head_mllm.py`` (with mllm's own
``dit.py``, ``flow.py`` and ``condition.py``, copied verbatim: they import only torch) gives the exported model
``generate_images(prompt_ids, attention_mask, steps, cfg_scale, generator)``. ``verify_gen_export`` checks in a
fresh transformers process that it draws the same pixels as ``MultimodalLM.generate_images`` for a seed.

Extending it: a new part adds its module to ``modeling_mllm.py`` behind a config key, its weights to
``remote_state_dict`` and its settings to ``remote_config`` (``extra_heads``).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional, Sequence

import torch

import mllm.gen
from mllm.vision.hf import arch_dict

from .common import Log, dtype_name, hf_text_config, write_generation_config, write_json, write_tokenizer, write_weights
from .llava import image_processor_config
from .towers import ConvertedTower
from .verify import VerifyError

REMOTE_CODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_code")
REMOTE_FILES = ("configuration_mllm.py", "modeling_mllm.py", "processing_mllm.py", "anyres_mllm.py",
                "vision_open_clip.py", "gen_head_mllm.py")
GEN_DIR = os.path.dirname(os.path.abspath(mllm.gen.__file__))
GEN_FILES = ("dit.py", "flow.py", "condition.py")  # mllm/gen's torch-only files, copied next to gen_head_mllm.py
MODEL_CLASS = "modeling_mllm.MllmForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_mllm.MllmConfig",
    "AutoModelForImageTextToText": MODEL_CLASS,
    "AutoModelForCausalLM": MODEL_CLASS,
    "AutoProcessor": "processing_mllm.MllmProcessor",
}
REMOTE_CONNECTORS = ("mlp2x_gelu", "qformer")


def remote_config(model, conv: Optional[ConvertedTower]) -> Dict[str, Any]:
    cfg = model.config
    geo = model.geometry
    if cfg.connector.kind not in REMOTE_CONNECTORS:
        raise ValueError(f"connector {cfg.connector.kind!r} has no exported modeling code (known: "
                         f"{', '.join(REMOTE_CONNECTORS)})")
    text = hf_text_config(model.llm.config)
    out: Dict[str, Any] = {
        "architectures": ["MllmForConditionalGeneration"],
        "model_type": "mllm",
        "auto_map": dict(AUTO_MAP),
        "connector": cfg.connector.kind,
        "text_config": text,
        # hidden-state indices (0 = embeddings), valid for the exported tower
        "vision_feature_layer": list(conv.feature_layers if conv else model.vision_tower.feature_layers),
        "vision_feature_select_strategy": geo.select_strategy,
        "image_token_index": int(model.image_token_id),
        "image_token": cfg.image_token,
        "image_grid_pinpoints": geo.pinpoints,
        "tile_size": geo.tile_size,
        "patch_size": geo.patch_size,
        "has_cls": geo.has_cls,
        "use_image_newline": bool(geo.image_newline),
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "torch_dtype": dtype_name(model.llm.get_input_embeddings().weight.dtype),
        "extra_heads": {"gen": gen_head_config(model)} if getattr(model, "gen_head", None) is not None else {},
    }
    if conv is not None:
        out.update(vision_backend="hf", vision_config=dict(conv.vision_config))
    else:
        arch = {k: v for k, v in model.vision_tower.arch_config().items() if k not in ("image_mean", "image_std")}
        out.update(vision_backend="open_clip", vision_config=arch)
    if cfg.connector.kind == "qformer":
        qcfg = arch_dict(model.connector.qformer_config)
        qcfg.pop("encoder_hidden_size", None)  # set from the tower's width when built
        out.update(qformer_config=qcfg, num_query_tokens=model.connector.num_queries)
    return out


def gen_head_config(model) -> Dict[str, Any]:
    """``extra_heads["gen"]``: what ``gen_head_mllm.MllmGenHead`` needs to rebuild the head (a diffusers VAE
    travels as its full AutoencoderKL config; its weights are in the checkpoint)."""
    head = model.gen_head
    cfg = head.config.to_dict()
    ae = head.autoencoder
    if cfg["autoencoder"].get("kind", "identity") == "diffusers":
        cfg["autoencoder"] = {"kind": "diffusers", "vae_config": dict(ae.vae.config), "scale": ae.scale,
                              "shift": ae.shift}
    else:
        cfg["autoencoder"] = {"kind": "identity", "channels": int(ae.latent_channels)}
    return cfg


def remote_state_dict(model, conv: Optional[ConvertedTower]) -> Dict[str, torch.Tensor]:
    state: Dict[str, torch.Tensor] = {}
    if conv is not None:
        state.update({f"vision_tower.{k}": v for k, v in conv.state_dict.items()})
    else:  # the exported OpenClipTower keeps mllm's module path (vision_tower.visual.*)
        state.update({f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()})
    state.update({f"connector.{k}": v for k, v in model.connector.state_dict().items()})
    if model.geometry.image_newline:
        state["image_newline"] = model.image_newline.detach()
    state.update({f"language_model.{k}": v for k, v in model.llm.state_dict().items()})
    if getattr(model, "gen_head", None) is not None:
        state.update({f"gen_head.{k}": v for k, v in model.gen_head.state_dict().items()})
    return state


def processor_files(model) -> Dict[str, Dict[str, Any]]:
    geo = model.geometry
    pre = image_processor_config(model)
    pre.pop("processor_class", None)
    pre["auto_map"] = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
    proc = {
        "processor_class": "MllmProcessor",
        "auto_map": {"AutoProcessor": AUTO_MAP["AutoProcessor"]},
        "image_token": model.config.image_token,
        "tile_size": geo.tile_size,
        "patch_size": geo.patch_size,
        "image_grid_pinpoints": geo.pinpoints,
        "has_cls": geo.has_cls,
        "vision_feature_select_strategy": geo.select_strategy,
        "use_image_newline": bool(geo.image_newline),
        "num_query_tokens": geo.queries_per_tile,
    }
    return {"preprocessor_config.json": pre, "processor_config.json": proc}


def export_remote(model, out_dir: str, conv: Optional[ConvertedTower] = None, *, chat_template: Optional[str] = None,
                  dtype: Optional[torch.dtype] = None, max_shard_size="5GB", stop_ids: Sequence[int] = (),
                  log: Optional[Log] = None) -> Dict[str, Any]:
    """Write ``model`` (LoRA already merged) as a trust_remote_code checkpoint; returns config.json."""
    os.makedirs(out_dir, exist_ok=True)
    # one precision for the whole checkpoint (transformers loads it with one dtype): the LLM's by default
    dtype = dtype or model.llm.get_input_embeddings().weight.dtype
    cfg = remote_config(model, conv)
    cfg["torch_dtype"] = dtype_name(dtype)
    state = remote_state_dict(model, conv)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    for name in REMOTE_FILES:
        shutil.copyfile(os.path.join(REMOTE_CODE_DIR, name), os.path.join(out_dir, name))
    for name in GEN_FILES:  # gen_head_mllm.py imports them; transformers copies relative imports of the model
        shutil.copyfile(os.path.join(GEN_DIR, name), os.path.join(out_dir, name))
    write_json(cfg, os.path.join(out_dir, "config.json"))
    write_weights(state, out_dir, max_shard_size=max_shard_size)
    for name, data in processor_files(model).items():
        write_json(data, os.path.join(out_dir, name))
    write_tokenizer(model.tokenizer, out_dir, image_token=model.config.image_token, chat_template=chat_template)
    write_generation_config(model.tokenizer, out_dir, cfg["text_config"], stop_ids)
    if log:
        log(f"wrote MllmForConditionalGeneration (remote code, {cfg['vision_backend']} tower, "
            f"{cfg['connector']} connector, {len(state)} tensors) to {out_dir}")
    return cfg


# ---- verification of the generation head ------------------------------------------------------------------
# Runs in a fresh interpreter (python -I) that imports only torch, safetensors and transformers.
_GEN_RUNNER = r"""
import json, sys
import torch, transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
job = json.loads(sys.argv[1])
kw = {"dtype": torch.float32} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": torch.float32}
model = AutoModelForImageTextToText.from_pretrained(job["model"], trust_remote_code=True, **kw).eval()
inp = load_file(job["inputs"])
g = torch.Generator().manual_seed(job["seed"])
images = model.generate_images(inp["input_ids"], inp["attention_mask"], steps=job["steps"],
                               cfg_scale=job["cfg_scale"], generator=g)
save_file({"images": images.float().contiguous()}, job["out"])
print(json.dumps({"transformers": transformers.__version__, "model_class": type(model).__name__}))
"""


def verify_gen_export(model, export_dir: str, prompts=("a red circle at the top",
                                                        "a blue star on the left and a green square at the bottom"),
                      *, seed: int = 0, steps: int = 4, cfg_scale: float = 3.0, python: Optional[str] = None,
                      timeout: float = 900) -> Dict[str, Any]:
    """Sample ``prompts`` with ``model`` (its ``generate_images``) and with the export loaded by plain
    transformers (``trust_remote_code``) in a fresh process, from the same seed; raises ``VerifyError``
    unless the images are identical. Returns {"max_abs_diff", "identical", "shape", "transformers", ...}."""
    import copy
    import json
    import subprocess
    import sys
    import tempfile

    from safetensors.torch import load_file, save_file

    if getattr(model, "gen_head", None) is None:
        raise ValueError("verify_gen_export: the model has no image-generation head")
    with open(os.path.join(export_dir, "config.json")) as f:
        exported_dtype = json.load(f).get("torch_dtype")
    ref = copy.deepcopy(model)
    if exported_dtype in ("bfloat16", "float16"):  # compare with the same rounding of the weights
        ref.to(getattr(torch, exported_dtype))
    ref = ref.float().eval()
    ids, mask = ref.gen_prompt_inputs(list(prompts))
    ours = ref.generate_images(list(prompts), steps=steps, cfg_scale=cfg_scale,
                               generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory(prefix="mllm_genverify_") as tmp:
        inputs, out = os.path.join(tmp, "inputs.safetensors"), os.path.join(tmp, "images.safetensors")
        save_file({"input_ids": ids.cpu().contiguous(), "attention_mask": mask.cpu().contiguous()}, inputs)
        job = {"model": os.path.abspath(export_dir), "inputs": inputs, "out": out, "seed": seed, "steps": steps,
               "cfg_scale": cfg_scale}
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   HF_MODULES_CACHE=os.path.join(tmp, "modules"))  # never a stale copy of earlier remote code
        proc = subprocess.run([python or sys.executable, "-I", "-c", _GEN_RUNNER, json.dumps(job)], env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise VerifyError(f"{export_dir}: transformers could not sample from the export:\n{tail}")
        theirs = load_file(out)["images"]
        info = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    same_shape = tuple(theirs.shape) == tuple(ours.shape)
    diff = (theirs - ours.float().cpu()).abs().max().item() if same_shape else float("inf")
    result = {"max_abs_diff": diff, "identical": same_shape and torch.equal(theirs, ours.float().cpu()),
              "shape": list(ours.shape), "seed": seed, "steps": steps, "cfg_scale": cfg_scale, **info}
    if not result["identical"]:
        raise VerifyError(f"{export_dir}: the export's generate_images differs from the source model "
                          f"(shapes {tuple(theirs.shape)} vs {tuple(ours.shape)}, max |diff| {diff:.3e})")
    return result
