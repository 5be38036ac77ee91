"""``mllm chat``: talk to a checkpoint (ours or an export), one-shot or interactive; see mllm/app/chat/.

    mllm chat --model ckpt/ --image cat.png --prompt "What is in the image?"    # one answer on stdout
    mllm chat --model ckpt/                                                       # interactive, streamed
    mllm chat --model hf_export/ --trust-remote-code --device cuda --bf16
"""
from __future__ import annotations

import argparse

NAME = "chat"
HELP = "chat with a checkpoint or an export: one-shot (--prompt) or interactive, with images"
DESCRIPTION = """Chat with an mllm checkpoint, or with an exported one (native Llava/LlavaNext, or a remote-code
export, which needs --trust-remote-code). Prompts use the model's own chat template and images are tiled as
in training; each user turn puts its images before its text, one <image> each.

With --prompt: one answer is printed to stdout and the command exits (errors: one line on stderr, exit 2).
Without: an interactive session on stdin; answers are streamed to stdout, everything else goes to stderr.
  /image PATH   attach an image to the next message (repeat for several)
  /reset        forget the conversation
  /help         list the commands
  /exit         quit (or end of input)
Greedy by default; --temperature > 0 samples (with --top-p)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="mllm checkpoint or exported transformers directory")
    p.add_argument("--image", action="extend", nargs="+", default=[], metavar="PATH",
                   help="image(s) for the first message, in order")
    p.add_argument("--prompt", default=None, help="one-shot: answer this and exit")
    p.add_argument("--system", default=None, help="system prompt (replaces the template's default)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature > 0")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--bf16", action="store_true", help="run in bfloat16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a remote-code export's own Python files to run")
    p.add_argument("--no-stream", action="store_true", help="interactive: print each answer when it is complete")


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from mllm.console import seed_everything as set_seed  # lazy: CLI start-up
    from transformers.utils import logging as hf_logging

    # lazy: CLI start-up (see commands/__init__.py)
    from mllm.app.chat import ChatSession, GenerationSettings, load_backend, run_interactive

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    if args.seed is not None:
        set_seed(args.seed)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    backend = load_backend(args.model, device=args.device, bf16=args.bf16, trust_remote_code=args.trust_remote_code)
    session = ChatSession(backend, settings, system=args.system)
    if args.prompt is not None:
        try:
            for path in args.image:
                session.attach_image(path)
            answer = session.ask(args.prompt)
        except ValueError as e:  # one line for scripts, whatever the message holds
            print(f"mllm chat: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        print(answer, flush=True)
        return 0
    for path in args.image:  # interactive: a bad --image is reported like /image, the session starts anyway
        try:
            session.attach_image(path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
    return run_interactive(session, sys.stdin, sys.stdout, sys.stderr, stream=not args.no_stream)
