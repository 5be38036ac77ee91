"""``mllm web``: the browser chat, served with the API by the same server (``mllm serve`` + a page at /).

    mllm web --model ckpt/                  # open http://127.0.0.1:8000/
    mllm web --model ckpt/ --port 7860 --api-key "$KEY"
"""
from __future__ import annotations

import argparse

from mllm.app.commands import serve

NAME = "web"
HELP = "a browser chat (image upload, streamed answers, multi-turn) on top of `mllm serve`"
DESCRIPTION = """Start `mllm serve` with a chat page at / : attach images, ask, watch the answer stream in, go on
with the conversation, Reset to start over. The page talks to the same server's OpenAI API (so every
`mllm serve` option applies); with --api-key, enter the key in the page."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    serve.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return serve.start(args, web=True)
