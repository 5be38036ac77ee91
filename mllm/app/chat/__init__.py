"""Chat with a model: conversation state, prompts in the training format, images, streamed generation.

    from mllm.app.chat import ChatSession, GenerationSettings, load_backend, run_interactive
    backend = load_backend("ckpt/")                  # an mllm checkpoint, or an export (Llava/LlavaNext/remote)
    chat = ChatSession(backend, GenerationSettings(max_new_tokens=64), system=None)
    chat.attach_image("cat.png")                     # goes with the next user turn; several allowed
    chat.ask("What is in the image?")                # -> the answer; ask(..., streamer=...) streams it
    chat.ask("And what colour is it?")               # earlier turns and their images stay in the context
    chat.reset()
    run_interactive(chat, sys.stdin, sys.stdout, sys.stderr)   # the `mllm chat` loop (/image /reset /exit)

Modules: ``prompt`` (settings, ``Prompt``, ``ChatError``), ``backends`` (the interface, ``MllmBackend``),
``load`` (``load_backend``), ``hf_backend`` (``TransformersBackend``), ``session`` (``ChatSession``), ``repl``
(``run_interactive``). Two backends behind one interface (``ChatBackend``: ``render``, ``encode``, ``generate``, ``decode``):

- ``MllmBackend``, an mllm checkpoint (``MultimodalLM.from_pretrained``). Prompts and pixels come from the
  model's ``MultimodalProcessor`` (``encode_prompt``), the object that also builds the training samples, so
  chat sees exactly the training format.
- ``TransformersBackend``, an exported checkpoint run with plain transformers: ``AutoProcessor`` +
  ``AutoModelForImageTextToText`` (a text-only causal LM: ``AutoTokenizer`` + ``AutoModelForCausalLM``),
  the processor's ``apply_chat_template`` and image handling. A remote-code export (``auto_map`` in its
  config.json) runs only with ``trust_remote_code=True``, because that executes the export's Python files.

A user turn is LLaVA style: its images first, one ``<image>`` marker each, then the text. Every turn
re-encodes the whole conversation (earlier images included). Greedy unless ``temperature > 0``.
What a user can get wrong (an unreadable image, an image for a model that cannot take one, a prompt
longer than the model's context, an ``<image>`` typed into the text) raises ``ChatError`` (a
``ValueError``) and leaves the conversation as it was before the turn.
"""
from __future__ import annotations

from .backends import ChatBackend, MllmBackend
from .hf_backend import TransformersBackend
from .load import checkpoint_kind, load_backend, resolve_device
from .prompt import ChatError, GenerationSettings, Prompt
from .repl import HELP, StreamPrinter, run_interactive
from .session import ChatSession

__all__ = ["HELP", "ChatBackend", "ChatError", "ChatSession", "GenerationSettings", "MllmBackend", "Prompt",
           "StreamPrinter", "TransformersBackend", "checkpoint_kind", "load_backend", "resolve_device",
           "run_interactive"]
