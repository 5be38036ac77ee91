"""``--verify``: load an export with plain transformers in a fresh process and compare it with the source.

    result = verify_export(model, "out/")          # raises VerifyError unless the export matches
    print(result.summary())
    verify_exports([(m1, "out1/"), (m2, "out2/")])  # one transformers process for several exports

The same image and conversation go through both sides, each with its own processor and chat template:
ours (``MultimodalProcessor.encode_prompt``, the encoder chat and eval use) in this process,
and the export's ``AutoProcessor`` (``apply_chat_template`` with its ``chat_template.jinja``) +
``AutoModelForImageTextToText`` in a subprocess that imports only transformers (``mllm/app/export/hf_runner.py``,
run with ``python -I``; ``trust_remote_code`` only for remote-code exports). The export passes when the
rendered prompts are the same text, the token ids agree, the fp32 logits agree within ``atol`` (1e-4) and
greedy generations of ``max_new_tokens`` (16) are identical. ``python=`` runs the transformers side with another
interpreter, e.g. a venv with transformers 4.57.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from data_pipelines.processor import MultimodalProcessor

from .common import CHAT_TEMPLATE_FILE

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_runner.py")
QUESTION = "What is in the image?"
FALLBACK_PROMPT = "USER: {image}\nWhat is in the image? ASSISTANT:"  # when no chat template is available


class VerifyError(ValueError):
    """The export does not reproduce the source model."""


@dataclass
class VerifyResult:
    max_abs_diff: float
    tokens_ours: List[int]
    tokens_theirs: List[int]
    input_ids_equal: bool
    pixel_max_diff: Optional[float]
    atol: float
    transformers_version: str = ""
    model_class: str = ""
    template_checked: bool = False   # the export has a chat template and it was compared with ours
    template_equal: bool = True
    notes: List[str] = field(default_factory=list)

    @property
    def tokens_equal(self) -> bool:
        return self.tokens_ours == self.tokens_theirs

    @property
    def ok(self) -> bool:
        return (self.input_ids_equal and self.max_abs_diff <= self.atol and self.tokens_equal
                and self.template_equal)

    def summary(self) -> str:
        pix = "n/a" if self.pixel_max_diff is None else f"{self.pixel_max_diff:.2e}"
        return (f"verify ({self.model_class}, transformers {self.transformers_version}): "
                f"max |logits diff| = {self.max_abs_diff:.3e} (limit {self.atol:g}); "
                f"greedy {len(self.tokens_ours)} tokens identical: {'yes' if self.tokens_equal else 'NO'}; "
                f"input ids equal: {'yes' if self.input_ids_equal else 'NO'}; chat template "
                f"{('same text' if self.template_equal else 'DIFFERS') if self.template_checked else 'not exported'}; "
                f"pixel max diff {pix}")


def default_image(tile: int):
    """A deterministic non-square test image (coloured bands and a disc) that needs AnyRes padding."""
    h, w = int(tile * 1.4) + 3, int(tile * 2.3) + 1
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    img = Image.fromarray(arr.astype("uint8"), "RGB")
    ImageDraw.Draw(img).ellipse((w // 4, h // 4, w // 2, h // 2), fill=(250, 30, 60))
    return img


def default_messages(question: str = QUESTION) -> List[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def our_prompt(processor: MultimodalProcessor, messages: List[dict], export_dir: str) -> Optional[str]:
    """The generation prompt our chat template renders (None when the export carries no template)."""
    if not os.path.isfile(os.path.join(export_dir, CHAT_TEMPLATE_FILE)):
        return None
    return processor.render(messages)


@torch.no_grad()
def _ours(model, image, messages: List[dict], prompt: Optional[str], max_new_tokens: int):
    """Our side: the processor encodes the conversation (or, for an export without a chat template, the
    fallback ``prompt`` text) exactly as chat and eval do; then logits and greedy tokens."""
    processor = MultimodalProcessor.for_model(model, num_threads=1)
    if prompt is None:
        enc = processor.encode_prompt(messages, [image])
    else:
        enc = processor.encode_text(prompt, [image])
    ids = torch.tensor([enc.input_ids], dtype=torch.long)  # (1, L)
    mask = torch.ones_like(ids)
    extra = enc.model_inputs()  # pixel_values (1, T, 3, S, S), image_sizes (1, 2)
    logits = model(ids, mask, **extra).logits.float()
    new = model.generate(ids, mask, **extra, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False)
    return ids, extra["pixel_values"], logits, new


def run_transformers_side(jobs: List[dict], python: Optional[str] = None, timeout: float = 1800) -> List[dict]:
    """Run ``hf_runner.py`` once for all ``jobs`` in a fresh interpreter; returns one info dict per job."""
    with tempfile.TemporaryDirectory(prefix="mllm_hf_") as tmp:
        jobs_path = os.path.join(tmp, "jobs.json")
        with open(jobs_path, "w") as f:
            json.dump(jobs, f)
        # a fresh module cache: never run a stale copy of an earlier export's remote code
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   HF_MODULES_CACHE=os.path.join(tmp, "modules"))
        cmd = [python or sys.executable, "-I", RUNNER, "--jobs", jobs_path]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        names = ", ".join(j["model"] for j in jobs)
        raise VerifyError(f"transformers could not run the export ({names}):\n{tail}")
    infos = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if len(infos) != len(jobs):
        raise VerifyError(f"hf_runner reported {len(infos)} results for {len(jobs)} exports:\n{proc.stdout[-2000:]}")
    return infos


def verify_export(model, export_dir: str, **kwargs) -> VerifyResult:
    """Compare ``model`` (LoRA merged) with its export in ``export_dir``; see the module docstring."""
    return verify_exports([(model, export_dir)], **kwargs)[0]


def verify_exports(pairs: Sequence[Tuple[object, str]], *, image=None, question: str = QUESTION,
                   max_new_tokens: int = 16, atol: float = 1e-4, python: Optional[str] = None,
                   check: bool = True) -> List[VerifyResult]:
    """``verify_export`` for several (model, export_dir) pairs with one transformers process.

    The prompt is one user turn (the image, then ``question``) rendered by our chat template on our side
    and by the export's ``chat_template.jinja`` on theirs; both renderings must be the same text.
    """
    messages = default_messages(question)
    with tempfile.TemporaryDirectory(prefix="mllm_verify_") as tmp:
        jobs, ours, prompts = [], [], []
        for i, (model, export_dir) in enumerate(pairs):
            with open(os.path.join(export_dir, "config.json")) as f:
                hf_cfg = json.load(f)
            img = image if image is not None else default_image(model.geometry.tile_size)
            text = our_prompt(MultimodalProcessor.for_model(model), messages, export_dir)
            prompts.append(text)
            fallback = FALLBACK_PROMPT.format(image=model.config.image_token) if text is None else None
            ours.append(_ours(_reference(model, hf_cfg), img, messages, fallback, max_new_tokens))
            text = text if text is not None else fallback
            image_path = os.path.join(tmp, f"image{i}.png")
            img.convert("RGB").save(image_path)
            jobs.append({"model": export_dir, "image": image_path, "prompt": text, "max_new_tokens": max_new_tokens,
                         "messages": messages,
                         "out": os.path.join(tmp, f"theirs{i}.safetensors"),
                         # remote-code exports only; native ones must load without it
                         "trust_remote_code": "auto_map" in hf_cfg})
        infos = run_transformers_side(jobs, python)
        theirs = [load_file(job["out"]) if "error" not in info else None for job, info in zip(jobs, infos)]
    results = [_compare(model, o, t, info, atol, p)
               for (model, _), o, t, info, p in zip(pairs, ours, theirs, infos, prompts)]
    if check:
        bad = [(d, r) for (_, d), r in zip(pairs, results) if not r.ok]
        if bad:
            raise VerifyError("; ".join(f"{d}: {r.summary()}" + ("; " + "; ".join(r.notes) if r.notes else "")
                                        + f"; ours {r.tokens_ours} vs theirs {r.tokens_theirs}" for d, r in bad))
    return results


def _reference(model, hf_cfg: dict):
    """A float32 eval copy of ``model``; weights exported in half precision are rounded the same way."""
    export_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(hf_cfg.get("torch_dtype"))
    ref = copy.deepcopy(model)
    if export_dtype is not None:
        ref.to(export_dtype)
    return ref.float().eval()


def _compare(model, ours, theirs, info: dict, atol: float, our_text: Optional[str]) -> VerifyResult:
    ids, pixels, logits, new = ours
    if theirs is None:  # transformers could not load or run this export
        return VerifyResult(max_abs_diff=float("inf"), tokens_ours=new[0].tolist(), tokens_theirs=[],
                            input_ids_equal=False, pixel_max_diff=None, atol=atol, model_class="?",
                            transformers_version="?", notes=[f"transformers failed: {info['error']}"])
    notes = []
    template_ok = our_text is None or info.get("prompt") == our_text
    if not template_ok:
        notes.append(f"the export's chat template renders {info.get('prompt')!r}, ours {our_text!r}")
    same_ids = theirs["input_ids"].shape == ids.shape and torch.equal(theirs["input_ids"], ids)
    if not same_ids:
        notes.append(f"the export's processor made {theirs['input_ids'].shape[-1]} tokens, ours {ids.shape[-1]} "
                     f"(<image> expanded to {int((theirs['input_ids'] == model.image_token_id).sum())} vs "
                     f"{int((ids == model.image_token_id).sum())} tokens)")
    pix = None
    if theirs["pixel_values"].numel() == pixels.numel():
        pix = (theirs["pixel_values"].reshape(pixels.shape) - pixels).abs().max().item()
    else:
        notes.append(f"pixel_values shapes differ: theirs {tuple(theirs['pixel_values'].shape)}, "
                     f"ours {tuple(pixels.shape)}")
    diff = (theirs["logits"] - logits).abs().max().item() if theirs["logits"].shape == logits.shape else float("inf")
    return VerifyResult(max_abs_diff=diff, tokens_ours=new[0].tolist(), tokens_theirs=theirs["new_tokens"][0].tolist(),
                        input_ids_equal=same_ids, pixel_max_diff=pix, atol=atol,
                        transformers_version=info.get("transformers", "?"), model_class=info.get("model_class", "?"),
                        template_checked=our_text is not None, template_equal=template_ok, notes=notes)
