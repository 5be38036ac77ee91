"""The chat template interface: a conversation -> text segments marked target / not target, plus Jinja.

    tpl = get_template("vicuna_v1")
    segs = tpl.render(messages, bos_token="<s>", eos_token="</s>")   # [Segment(text, target), ...]
    text = tpl.text(messages, bos_token="<s>", eos_token="</s>")     # "".join of the segments
    prompt = tpl.generation_prompt(messages[:-1], bos_token="<s>", eos_token="</s>")  # for chat / eval
    tok.chat_template = tpl.jinja()   # HF apply_chat_template renders the same text (export)

``target`` segments are what the model learns to say: an assistant turn's content and its end-of-turn
token. Everything else (system prompt, user turns, role headers, image markers) gets label -100.

Messages are ``{"role": "system" | "user" | "assistant", "content": str | list of parts}``. A list of parts
becomes a string by the rule every Jinja export shares: an image part (``type`` ``image`` or
``image_url``) is ``"<image>\\n"``, a text part is its text. A system message may only come first; when
there is none, the template's ``default_system`` (if any) is used. A subclass implements ``_render`` and
``jinja``; ``jinja()`` output must render exactly what ``text()`` renders (tests check it through HF's
``apply_chat_template``), with target parts inside ``{% generation %}`` blocks so that HF's
``return_assistant_tokens_mask`` marks the same text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mllm.constants import IMAGE_TOKEN as IMAGE_MARKER


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool = False


def content_text(content: Any) -> str:
    """String content as is; a list of parts joined by the shared rule (image -> ``"<image>\\n"``)."""
    if isinstance(content, str):
        return content
    out = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append(part["text"])
        elif kind in ("image", "image_url"):
            out.append(IMAGE_MARKER + "\n")
        else:
            raise ValueError(f"content part {i}: expected {{'type': 'text' | 'image' | 'image_url'}}, got {part!r}")
    return "".join(out)


# A Jinja macro with the same rule, shared by every template's export.
JINJA_CONTENT_MACRO = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' or part['type'] == 'image_url' -%}{{- '<image>\\n' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)


def jinja_str(text: str) -> str:
    """A Python string as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


class ChatTemplate:
    """Base class; see the module docstring. ``system=`` overrides the default system prompt."""

    name: str = ""
    default_system: Optional[str] = None

    def __init__(self, system: Optional[str] = None):
        if system is not None:
            self.default_system = system

    # ---- what subclasses provide -------------------------------------------------------------------
    def _render(self, system: Optional[str], turns: Sequence[Tuple[str, str]], bos: str, eos: str,
                add_generation_prompt: bool) -> List[Segment]:
        raise NotImplementedError

    def jinja(self) -> str:
        raise NotImplementedError

    def end_of_turn(self, eos_token: str) -> str:
        """The text that ends an assistant turn (the generation stop string)."""
        return eos_token

    # ---- shared -----------------------------------------------------------------------------------------
    def render(self, messages: Sequence[Dict[str, Any]], *, bos_token: Optional[str] = "",
               eos_token: Optional[str] = "", add_generation_prompt: bool = False) -> List[Segment]:
        system, turns = self._split(messages)
        segs = self._render(system, turns, bos_token or "", eos_token or "", add_generation_prompt)
        return merge_segments(segs)

    def text(self, messages: Sequence[Dict[str, Any]], **kwargs: Any) -> str:
        return "".join(s.text for s in self.render(messages, **kwargs))

    def generation_prompt(self, messages: Sequence[Dict[str, Any]], **kwargs: Any) -> str:
        """The prompt to generate the next assistant turn after ``messages`` (which end with a user turn)."""
        if messages and messages[-1]["role"] == "assistant":
            raise ValueError("generation_prompt: the conversation already ends with an assistant turn")
        return self.text(messages, add_generation_prompt=True, **kwargs)

    def _split(self, messages: Sequence[Dict[str, Any]]) -> Tuple[Optional[str], List[Tuple[str, str]]]:
        system = self.default_system
        turns: List[Tuple[str, str]] = []
        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "system":
                if i != 0:
                    raise ValueError(f"{self.name}: message {i}: a system message may only come first")
                system = content_text(m["content"])
            elif role in ("user", "assistant"):
                turns.append((role, content_text(m["content"])))
            else:
                raise ValueError(f"{self.name}: message {i}: unknown role {role!r} (system, user, assistant)")
        return system, turns

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def merge_segments(segs: Sequence[Segment]) -> List[Segment]:
    """Join neighbours with the same target flag and drop empty ones (fewer tokenizer calls)."""
    out: List[Segment] = []
    for s in segs:
        if not s.text:
            continue
        if out and out[-1].target == s.target:
            out[-1] = Segment(out[-1].text + s.text, s.target)
        else:
            out.append(s)
    return out
