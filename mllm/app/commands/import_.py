"""``mllm import``: a llava-hf checkpoint (Llava / LlavaNext, 4.x or 5.x layout) -> an mllm checkpoint.

    mllm import --from llava-v1.6-vicuna-7b-hf/ --out ckpt/ [--chat-template vicuna_v1] [--overwrite]

The result loads with ``MultimodalLM.from_pretrained("ckpt/")`` and trains with the usual stages
(``init_from: ckpt/``). See ``mllm/app/export/importer.py`` for what is read.
"""
from __future__ import annotations

import argparse

NAME = "import"
HELP = "import a llava-hf Llava/LlavaNext checkpoint as an mllm checkpoint (to continue training it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, help="llava-hf checkpoint directory (safetensors)")
    parser.add_argument("--out", required=True, help="mllm checkpoint directory to write")
    parser.add_argument("--chat-template", default=None,
                        help="our chat template name (default: the one whose Jinja matches the checkpoint's, "
                             "else vicuna_v1)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from mllm.app.export.importer import import_llava  # lazy: CLI start-up (see commands/__init__.py)

    import_llava(args.source, args.out, chat_template=args.chat_template, overwrite=args.overwrite, log=print)
    return 0
