"""``mllm serve``: an OpenAI-compatible Chat Completions server for a checkpoint or an export; see mllm/app/serve/.

    mllm serve --model ckpt/                                   # http://127.0.0.1:8000/v1
    mllm serve --model hf_export/ --host 0.0.0.0 --port 9000 --api-key "$KEY" --max-batch-size 16
    mllm serve --model ckpt/ --allow-local-images /data/images  # file:// image URLs under that directory
"""
from __future__ import annotations

import argparse

NAME = "serve"
HELP = "serve a checkpoint or an export over the OpenAI Chat Completions API (FastAPI + uvicorn)"
DESCRIPTION = """Serve an mllm checkpoint (or an `mllm export` directory) over the OpenAI Chat Completions API:
POST /v1/chat/completions (text and image_url parts, stream: true as server-sent events, max_tokens /
max_completion_tokens, temperature, top_p, seed, stop, usage), GET /v1/models, GET /health.

Requests arriving together are batched into one generate call (--max-batch-size, --batch-wait-ms); at most
--max-queue wait (then 503); each is cancelled after --request-timeout-s (504) or when its client leaves.
Images: base64 data URLs (PNG, JPEG, WebP) within --max-image-bytes / --max-image-pixels; file:// URLs only
under --allow-local-images DIR; http(s) URLs only with --allow-remote-images. Binds to 127.0.0.1 unless
--host says otherwise; --api-key is then required on every route but /health. Greedy unless the request
sets temperature > 0. Needs the serve extra: pip install 'mllm[serve]'."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mllm.app.serve.settings import ServeSettings  # lazy: CLI start-up

    d = ServeSettings()
    p.add_argument("--model", required=True, help="mllm checkpoint or exported transformers directory")
    p.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all routes but /health)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: directory name)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="requests per generate call")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long to collect requests before a batch starts")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests beyond this get 503")
    p.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s)
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help="answer budget when a request sets none")
    p.add_argument("--max-images", type=int, default=d.max_images, help="image parts per request")
    p.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes)
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    p.add_argument("--allow-local-images", default=None, metavar="DIR",
                   help="accept file:// image URLs for files under DIR")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--bf16", action="store_true", help="run in bfloat16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a remote-code export's own Python files to run")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from(args: argparse.Namespace):
    from mllm.app.serve.settings import ServeSettings  # lazy: CLI start-up

    return ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key, served_model_name=args.served_model_name,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s, default_max_tokens=args.default_max_tokens,
        max_images=args.max_images, max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
        max_request_bytes=args.max_request_bytes, allow_local_images=args.allow_local_images,
        allow_remote_images=args.allow_remote_images)


def start(args: argparse.Namespace, web: bool) -> int:
    import logging
    import sys

    from transformers.utils import logging as hf_logging

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"{e.name} is not installed: pip install 'mllm[serve]' (fastapi, uvicorn)") from None
    from mllm.app.serve import ServedModel  # lazy: CLI start-up
    from mllm.app.serve.server import run_server  # lazy: CLI start-up

    hf_logging.set_verbosity_error()
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model = ServedModel.load(args.model, device=args.device, bf16=args.bf16, trust_remote_code=args.trust_remote_code,
                             model_id=settings.served_model_name)
    where = f"http://{settings.host}:{settings.port}"
    print(f"serving {model.id!r} ({model.kind}) at {where}/v1" + (f"; web chat at {where}/" if web else ""),
          file=sys.stderr, flush=True)
    run_server(model, settings, web=web, log_level=args.log_level)
    return 0


def run(args: argparse.Namespace) -> int:
    return start(args, web=False)
