"""``mllm export``: an mllm checkpoint -> a transformers checkpoint (native Llava/LlavaNext or remote code).

    mllm export --model ckpt/ --out hf/ --verify
    mllm export --model ckpt/ --out hf/ --path remote --dtype bfloat16 --overwrite
    mllm export --model ckpt/ --out hf/ --verify --verify-python /opt/tf457/bin/python   # check in 4.57 too

See ``mllm/app/export/__init__.py`` for which path a model takes and what is written.
"""
from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a checkpoint to a transformers checkpoint (Llava/LlavaNext, or remote code), optionally verified"
DESCRIPTION = """Export an mllm checkpoint directory to a HuggingFace transformers checkpoint.

MLP-connector models with an HF CLIP/SigLIP tower (or an open_clip ViT that converts exactly) become native
LlavaForConditionalGeneration (AnyRes off) / LlavaNextForConditionalGeneration (AnyRes on) checkpoints that
load in transformers 4.57 and 5.x. Other models (Q-Former, towers without a transformers counterpart) are
written with their own modeling code (load with trust_remote_code=True). A peft LoRA adapter in the
checkpoint is merged first. The chosen path is printed.

--verify loads the export with plain transformers in a fresh process, runs the same image and prompt through
both models and fails unless the fp32 logits agree within 1e-4 and 16 greedy tokens are identical; for a model
with an image-generation head it also samples two prompts on both sides from one seed and fails unless the
images are identical."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="mllm checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory (new or empty, unless --overwrite)")
    parser.add_argument("--verify", action="store_true", help="check the export against the source model")
    parser.add_argument("--path", choices=("auto", "native", "remote"), default="auto",
                        help="force an export path (default: native when possible)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="weight precision to write (default: the checkpoint's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--scores", action="append", default=[], metavar="SCORES_JSON",
                        help="an `mllm eval` scores.json to list in the model card (repeatable)")
    parser.add_argument("--verify-python", default=None,
                        help="interpreter for the transformers side of --verify (e.g. a venv with 4.57)")


def run(args: argparse.Namespace) -> int:
    import logging

    from mllm.app.export import export_model  # lazy: CLI start-up (see commands/__init__.py)
    from mllm.llm import resolve_dtype  # lazy: CLI start-up (see commands/__init__.py)

    logging.getLogger("transformers").setLevel(logging.ERROR)
    report = export_model(args.model, args.out, verify=args.verify, path=args.path,
                          dtype=resolve_dtype(args.dtype), max_shard_size=args.max_shard_size,
                          overwrite=args.overwrite, verify_python=args.verify_python, scores=args.scores)
    print(f"exported {args.model} -> {args.out} ({report.config['architectures'][0]})")
    return 0
