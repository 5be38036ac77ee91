"""Serving: an OpenAI-compatible Chat Completions server with request batching, and a browser chat page.

    mllm serve --model ckpt/ [--host 127.0.0.1 --port 8000 --api-key KEY --max-batch-size 8]
    mllm web --model ckpt/                      # the same server, with the chat page at http://127.0.0.1:8000/

    from mllm.app.serve import BackgroundServer, ServedModel, ServeSettings
    with BackgroundServer(ServedModel.load("ckpt/"), ServeSettings(port=0)) as srv:
        print(srv.url)                          # http://127.0.0.1:<free port>

Modules: ``adapter`` (the one door to the chat backends: encode, decode, batched generate), ``batching``
(one left-padded ``generate`` for several requests, each with its own stops, budget and sampling),
``answer_text`` (stop strings, what may be streamed), ``scheduler`` (the queue and the batching worker
thread), ``protocol`` (the OpenAI wire format and error objects), ``images`` (image URLs within limits),
``prepare`` (request -> generation request), ``settings``, ``app`` (FastAPI routes), ``server`` (uvicorn).
FastAPI and uvicorn come with the ``serve`` extra (``pip install mllm[serve]``).
"""
import importlib

# lazily: `mllm --help` reads the settings' defaults without importing torch, FastAPI or uvicorn
_WHERE = {"EncodedPrompt": "adapter", "ServedModel": "adapter", "ServeSettings": "settings",
          "BackgroundServer": "server", "run_server": "server", "create_app": "app"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_WHERE)
