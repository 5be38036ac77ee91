"""``ChatSession``: a multi-turn conversation with one backend.

    chat = ChatSession(backend, GenerationSettings(max_new_tokens=64), system=None)
    chat.attach_image("cat.png")          # goes with the next user turn; several allowed
    chat.ask("What is in the image?")     # -> the answer, kept in the conversation
    chat.reset()

A user turn is LLaVA style: its images first, one ``<image>`` marker each, then the text. Every turn
re-encodes the whole conversation (earlier images included). What a user can get wrong raises
``ChatError`` and leaves the conversation as it was before the turn.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from data_pipelines.images import ImageLoadError, load_image
from mllm.constants import IMAGE_TOKEN as IMAGE_MARKER

from .backends import ChatBackend
from .prompt import ChatError, GenerationSettings, Prompt


class ChatSession:
    """A multi-turn conversation with one backend (see the module docstring)."""

    def __init__(self, backend: ChatBackend, settings: Optional[GenerationSettings] = None,
                 system: Optional[str] = None):
        self.backend = backend
        self.settings = settings or GenerationSettings()
        self.system = system
        self.turns: List[Dict[str, Any]] = []  # user / assistant messages so far
        self.images: List[Any] = []  # the images of those turns, in order
        self.pending: List[Any] = []  # attached, going with the next user turn
        self.last_prompt: Optional[Prompt] = None

    @property
    def messages(self) -> List[Dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return system + self.turns

    def attach_image(self, source: Any):
        """Load ``source`` (a path, bytes or a PIL image) for the next user turn; returns the image."""
        if not self.backend.accepts_images:
            raise ChatError(f"this model takes no images: {self.backend.no_images_reason}")
        if isinstance(source, (str, os.PathLike)):
            source = os.path.expanduser(str(source))
        try:
            image = load_image(source, max_pixels=self.backend.max_pixels)
        except ImageLoadError as e:
            raise ChatError(f"cannot load image {e}") from None
        self.pending.append(image)
        return image

    def reset(self) -> None:
        self.turns, self.images, self.pending, self.last_prompt = [], [], [], None

    def build_prompt(self, text: str) -> Prompt:
        """The prompt ``ask(text)`` would run; raises ``ChatError`` when it cannot be run."""
        return self._prepare(text)[0]

    def ask(self, text: str, streamer=None) -> str:
        """Send a user turn (with the attached images); returns the answer, kept in the conversation."""
        try:
            prompt, user = self._prepare(text)
        except ChatError as e:
            dropped, self.pending = len(self.pending), []
            raise ChatError(f"{e} (message not sent" + (f"; its {dropped} attached image(s) dropped)" if dropped
                                                         else ")")) from None
        budget = self.settings.max_new_tokens
        if self.backend.context_length:
            budget = min(budget, self.backend.context_length - prompt.length)
        new = self.backend.generate(prompt, budget, streamer=streamer, **self.settings.sampling_kwargs())
        answer = self.backend.decode(new)
        self.turns += [user, {"role": "assistant", "content": answer}]
        self.images += self.pending
        self.pending = []
        self.last_prompt = prompt
        return answer

    def _prepare(self, text: str):
        text = text.strip()
        if not text and not self.pending:
            raise ChatError("empty message")
        token = self.backend.image_token or IMAGE_MARKER
        if token in text:
            raise ChatError(f"the message contains {token!r}, the model's image placeholder; attach images with "
                            f"/image PATH (--image) instead")
        content = [{"type": "image"} for _ in self.pending] + ([{"type": "text", "text": text}] if text else [])
        user = {"role": "user", "content": content}
        prompt = self.backend.encode(self.messages + [user], self.images + self.pending)
        limit = self.backend.context_length
        if limit and prompt.length >= limit:
            hint = "; /reset starts a new conversation" if self.turns else ""
            raise ChatError(f"the prompt is {prompt.length} tokens ({prompt.num_image_tokens} of them image "
                            f"tokens) but the model's context is {limit} tokens, leaving no room for an "
                            f"answer{hint}")
        return prompt, user
