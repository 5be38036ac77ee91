"""Run an exported checkpoint with plain transformers: no mllm import, meant for a fresh process.

    python mllm/app/export/hf_runner.py --model OUT --image img.png --prompt "USER: <image>\\nHi ASSISTANT:" \\
        --max-new-tokens 16 --out result.safetensors [--trust-remote-code]
    python mllm/app/export/hf_runner.py --jobs jobs.json      # several exports, one interpreter start-up

Loads the processor and model with the Auto classes (float32, the PIL image-processor backend, which is what
transformers 4.57 uses and what mllm's AnyResImageProcessor reproduces), renders a job's ``messages`` with
the export's chat template when it has one (else uses ``prompt``), tokenises without adding special tokens
(the template writes them), runs one forward pass and greedy generation, and writes input_ids,
pixel_values, logits and the new tokens to ``out`` (safetensors); the rendered prompt is printed.
``mllm.app.export.verify`` compares them with the source model. Works with transformers 4.57 and 5.x.
"""
from __future__ import annotations

import argparse
import json
import sys


def processor_kwargs(transformers_version: str) -> dict:
    """How to ask ``AutoProcessor.from_pretrained`` for the PIL image backend, the pixels training used:
    5.x picks torchvision whenever it is importable (its resize differs, up to 0.015 per pixel) and honours
    ``backend="pil"``; 4.x honours ``use_fast=False``. The model card and the README show this same call."""
    return {"backend": "pil"} if int(transformers_version.split(".")[0]) >= 5 else {"use_fast": False}


def run_job(job: dict) -> dict:
    """One export: load, forward, generate; writes job["out"] and returns what was run."""
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    major = int(transformers.__version__.split(".")[0])
    trust = bool(job.get("trust_remote_code"))
    processor = AutoProcessor.from_pretrained(job["model"], trust_remote_code=trust,
                                              **processor_kwargs(transformers.__version__))
    dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    model = AutoModelForImageTextToText.from_pretrained(job["model"], trust_remote_code=trust, **dtype).eval()
    image = Image.open(job["image"]).convert("RGB")
    prompt = job["prompt"]
    if job.get("messages") and getattr(processor, "chat_template", None):
        # the export's own chat template renders the conversation (it carries BOS where the format wants it)
        prompt = processor.apply_chat_template(job["messages"], add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, add_special_tokens=False, return_tensors="pt")
    n = int(job.get("max_new_tokens", 16))
    with torch.no_grad():
        logits = model(**inputs).logits.float()
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    info = {"transformers": transformers.__version__, "model_class": type(model).__name__, "prompt": prompt,
            "processor_class": type(processor).__name__,
            "image_processor_class": type(processor.image_processor).__name__}
    meta = {k: v for k, v in info.items() if k != "prompt"}
    save_file({"input_ids": inputs["input_ids"].contiguous(),
               "pixel_values": inputs["pixel_values"].float().contiguous(),
               "logits": logits.contiguous(), "new_tokens": new.contiguous()}, job["out"], metadata=meta)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", help="a JSON list of jobs (keys as the options below) run in this one process")
    p.add_argument("--model")
    p.add_argument("--image")
    p.add_argument("--prompt")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out")
    p.add_argument("--trust-remote-code", action="store_true")
    args = p.parse_args(argv)
    if args.jobs:
        with open(args.jobs) as f:
            jobs = json.load(f)
    else:
        if not (args.model and args.image and args.prompt and args.out):
            p.error("--model, --image, --prompt and --out are required without --jobs")
        jobs = [{"model": args.model, "image": args.image, "prompt": args.prompt, "out": args.out, "messages": None,
                 "max_new_tokens": args.max_new_tokens, "trust_remote_code": args.trust_remote_code}]
    for job in jobs:
        try:
            info = run_job(job)
        except Exception as e:  # reported per job: one broken export must not hide the others' results
            info = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
