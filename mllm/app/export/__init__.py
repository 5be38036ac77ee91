"""HuggingFace export and import.

    from mllm.app.export import export_model
    report = export_model("ckpt/", "hf_out/", verify=True)     # or export_model(model, ...)
    print(report.path, report.reason, report.verify.summary())

    mllm export --model ckpt/ --out hf_out/ --verify            # the same from the command line
    mllm import --from llava-hf-dir/ --out ckpt/                # llava-hf checkpoint -> ours

Which path a model takes (printed, and in ``report.path``):
  "llava" / "llava_next"  MLP connector + a tower transformers has (HF CLIP/SigLIP, or an open_clip ViT that
                          converts exactly): a native ``LlavaForConditionalGeneration`` (AnyRes off) or
                          ``LlavaNextForConditionalGeneration`` (AnyRes on), in the layout transformers 4.57
                          and 5.x both load (``mllm.app.export.llava``)
  "remote"                everything else (Q-Former, towers without a transformers counterpart): a transformers
                          checkpoint with its own modeling code and ``auto_map``, loaded with
                          ``trust_remote_code=True`` (``mllm.app.export.remote``); ``report.reason`` says why
LoRA adapters are merged first. ``verify=True`` checks the export in a fresh transformers-only process
(``mllm.app.export.verify``), and for a model with an image-generation head also that the export draws the
same pixels for a seed (``mllm.app.export.remote.verify_gen_export``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from data_pipelines.processor import MultimodalProcessor
from mllm.config import ModelConfig
from mllm.llm import resolve_dtype

from .common import CHAT_TEMPLATE_FILE, load_for_export, merge_lora_if_any
from .llava import export_llava, native_blocker
from .model_card import CARD_FILE, write_model_card
from .remote import GEN_FILES, REMOTE_FILES, export_remote, verify_gen_export
from .towers import NotConvertible, export_vision_tower
from .verify import verify_export

PATHS = ("auto", "native", "remote")


@dataclass
class ExportReport:
    out_dir: str
    path: str                  # "llava" | "llava_next" | "remote"
    reason: Optional[str]      # why not native (remote path), else None
    config: Dict[str, Any]
    verify: Any = None         # VerifyResult when verified
    gen_verify: Optional[Dict[str, Any]] = None   # verify_gen_export's result for a model with a gen head


def choose_path(model, force: str = "auto"):
    """(path, converted tower or None, reason): the export route for ``model`` (see the module docstring)."""
    if force not in PATHS:
        raise ValueError(f"unknown export path {force!r}; known: {', '.join(PATHS)}")
    conv, tower_reason = None, None
    try:
        conv = export_vision_tower(model.vision_tower, model.config.vision.kind)
    except NotConvertible as e:
        tower_reason = str(e)
    blocker = native_blocker(model) or (f"the vision tower does not map onto transformers: {tower_reason}"
                                        if tower_reason else None)
    if force == "native" and blocker:
        raise ValueError(f"cannot export natively: {blocker}")
    if force == "remote" or blocker:
        return "remote", conv, blocker or "remote-code export requested"
    return ("llava_next" if model.geometry.grid_pinpoints else "llava"), conv, None


def export_model(source, out_dir: str, *, verify: bool = False, path: str = "auto",
                 dtype: Optional[torch.dtype] = None, max_shard_size="5GB", overwrite: bool = False,
                 verify_python: Optional[str] = None, log: Optional[Callable[[str], None]] = print,
                 scores: Sequence[str] = ()) -> ExportReport:
    """Export an mllm model (a ``MultimodalLM`` or a checkpoint directory) to a transformers checkpoint.

    ``path`` forces "native" or "remote" ("auto": native when possible). ``dtype`` is the precision written
    (default: the checkpoint's / the LLM's). A ``MultimodalLM`` whose LLM is LoRA-wrapped is merged in place.
    ``verify_python`` runs the verification's transformers side with another interpreter. A model card
    (``README.md``: parts, training stages, ``scores`` files, how to load and serve) is written beside it.
    """
    _check_out_dir(out_dir, overwrite)
    if isinstance(source, (str, os.PathLike)):
        model = load_for_export(str(source), log)  # float32 in memory
        if dtype is None:  # write the weights in the precision the checkpoint was saved in

            dtype = resolve_dtype(ModelConfig.load(str(source)).llm.dtype)
    else:
        model = merge_lora_if_any(source, log)
    model.eval()
    _remove_stale(out_dir)
    route, conv, reason = choose_path(model, path)
    if log:
        log(f"export path: {route}" + (f" (not native: {reason})" if reason else ""))
    processor = MultimodalProcessor.for_model(model)  # the chat template and end-of-turn ids training used
    kwargs = dict(chat_template=processor.template.jinja(), dtype=dtype, max_shard_size=max_shard_size,
                  stop_ids=processor.stop_ids, log=log)
    if route == "remote":
        config = export_remote(model, out_dir, conv, **kwargs)
    else:
        config = export_llava(model, conv, out_dir, **kwargs)

    write_model_card(model, out_dir, route, source=str(source) if isinstance(source, (str, os.PathLike)) else None,
                     scores=scores)
    report = ExportReport(out_dir=out_dir, path=route, reason=reason, config=config)
    if verify:
        report.verify = verify_export(model, out_dir, python=verify_python)
        if log:
            log(report.verify.summary())
        if getattr(model, "gen_head", None) is not None:  # the generation path too: the same pixels for a seed

            report.gen_verify = verify_gen_export(model, out_dir, python=verify_python)
            if log:
                log(f"verify gen: images identical to the source model's ({report.gen_verify['shape']}, seed "
                    f"{report.gen_verify['seed']}, {report.gen_verify['steps']} steps, max |diff| "
                    f"{report.gen_verify['max_abs_diff']:.1e})")
    return report


def _remove_stale(out_dir: str) -> None:
    # files of an earlier export that this one may not rewrite (its code files, an old chat template)
    # the gen head's copied files (dit.py, ...) too: a native export over a remote one must not leave them
    for name in REMOTE_FILES + GEN_FILES + (CHAT_TEMPLATE_FILE, CARD_FILE):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.isfile(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"--out {out_dir!r} is not empty; choose a new directory or pass --overwrite")


__all__ = ["ExportReport", "choose_path", "export_model", "load_for_export", "merge_lora_if_any"]
