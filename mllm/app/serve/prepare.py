"""A validated Chat Completions request -> a ``GenRequest`` for the batcher, or an ``APIError`` (4xx).

    gen = prepare(request, model, limits)      # messages converted, images loaded, prompt encoded, budget set

Messages become the chat backends' format: system (and developer) turns their text, user turns their parts
in order (each image part one ``{"type": "image"}``, rendered as the model's image marker where it
stands), assistant turns their text. A user turn with an image then text is exactly what ``mllm chat
--image X --prompt Y`` sends. The answer budget is ``max_completion_tokens`` (or ``max_tokens``), else
the room left in the context capped by ``default_max_tokens``; a prompt (plus an explicit budget) that
does not fit the context is a 400, as in OpenAI's API.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from .adapter import ServedModel
from .batching import GenRequest
from .images import ImagePolicy, fetch_image
from .protocol import APIError, ChatCompletionRequest


@dataclass
class Limits:
    max_images: int = 4  # image parts per request
    default_max_tokens: int = 256
    images: ImagePolicy = field(default_factory=ImagePolicy)


def convert_messages(req: ChatCompletionRequest, model: ServedModel, limits: Limits
                     ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """-> (messages for the backend, [(param, image url)] in image order)."""
    marker = model.image_token or "<image>"
    messages: List[Dict[str, Any]] = []
    urls: List[Tuple[str, str]] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        parts = [{"type": "text", "text": m.content}] if isinstance(m.content, str) else m.content
        content: List[Dict[str, Any]] = []
        for j, part in enumerate(parts):
            param = f"messages.{i}.content" + ("" if isinstance(m.content, str) else f".{j}")
            if isinstance(part, dict) or part.type == "text":
                text = part["text"] if isinstance(part, dict) else part.text
                if marker in text:
                    raise APIError(400, f"{param}: the text contains {marker!r}, the model's image placeholder; "
                                        f"send images as image_url parts", param=param, code="invalid_value")
                content.append({"type": "text", "text": text})
            else:
                if role != "user":
                    raise APIError(400, f"{param}: images go in user messages, not {m.role} messages",
                                   param=param, code="invalid_value")
                urls.append((param + ".image_url", part.image_url.url))
                content.append({"type": "image"})
        if role == "user":
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": role, "content": "".join(p["text"] for p in content)})
    if messages[-1]["role"] != "user":
        raise APIError(400, f"the last message must be a user message (got {req.messages[-1].role})",
                       param=f"messages.{len(messages) - 1}.role", code="invalid_value")
    if urls and not model.accepts_images:
        raise APIError(400, f"this model takes no images ({model.no_images_reason})", param=urls[0][0],
                       code="images_not_supported")
    if len(urls) > limits.max_images:
        raise APIError(400, f"{len(urls)} image parts, but this server takes at most {limits.max_images} per "
                            f"request", param=urls[limits.max_images][0], code="too_many_images")
    return messages, urls


def prepare(req: ChatCompletionRequest, model: ServedModel, limits: Limits) -> GenRequest:
    """Blocking (image decoding, tokenising): run it off the event loop."""
    req.check_supported()
    if req.model != model.id:
        raise APIError(404, f"the model {req.model!r} does not exist (this server serves {model.id!r})",
                       param="model", code="model_not_found")
    stop = req.stop_list()
    messages, urls = convert_messages(req, model, limits)
    images = [fetch_image(url, limits.images, param) for param, url in urls]
    try:
        prompt = model.encode(messages, images)
    except ValueError as e:
        raise APIError(400, f"the prompt cannot be built: {e}", param="messages", code="invalid_value") from None
    context = model.context_length
    asked = req.max_completion_tokens or req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if context and (prompt.length >= context or (asked and prompt.length + asked > context)):
        wanted = f" and {asked} in the completion ({name})" if asked else ""
        raise APIError(400, f"this model's maximum context length is {context} tokens; the messages take "
                            f"{prompt.length} tokens ({prompt.num_image_tokens} of them for images){wanted}. "
                            f"Shorten the messages{' or lower ' + name if asked else ''}.",
                       param="messages", code="context_length_exceeded")
    budget = asked or min(limits.default_max_tokens, (context - prompt.length) if context else limits.default_max_tokens)
    temperature = req.temperature if req.temperature is not None else 0.0
    return GenRequest(prompt, int(budget), temperature=float(temperature),
                      top_p=float(req.top_p if req.top_p is not None else 1.0), seed=req.seed, stop=stop)
