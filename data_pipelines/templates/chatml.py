"""``chatml``: Qwen2's ChatML format.

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<image>\\n{q1}<|im_end|>\\n
    <|im_start|>assistant\\n{a1}<|im_end|>\\n<|im_start|>user\\n{q2}<|im_end|>\\n
    <|im_start|>assistant\\n{a2}<|im_end|>\\n
    generation prompt: ... <|im_start|>assistant\\n

(shown wrapped at a "\\n" that is in the text). Follows the ``chat_template`` of Qwen/Qwen2-7B-Instruct:
no BOS, and the default system prompt "You are a helpful assistant." when the conversation has none.
Targets: the assistant content and ``<|im_end|>`` (Qwen's end-of-turn and EOS token); the newline after
it is not a target.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from data_pipelines.templates.base import JINJA_CONTENT_MACRO, ChatTemplate, Segment, jinja_str

QWEN2_SYSTEM = "You are a helpful assistant."
IM_END = "<|im_end|>"


class ChatMLTemplate(ChatTemplate):
    name = "chatml"
    default_system: Optional[str] = QWEN2_SYSTEM

    def _render(self, system: Optional[str], turns: Sequence[Tuple[str, str]], bos: str, eos: str,
                add_generation_prompt: bool) -> List[Segment]:
        segs = []
        if system is not None:
            segs.append(Segment(f"<|im_start|>system\n{system}{IM_END}\n"))
        for role, content in turns:
            if role == "assistant":
                segs += [Segment("<|im_start|>assistant\n"), Segment(content + IM_END, target=True), Segment("\n")]
            else:
                segs.append(Segment(f"<|im_start|>{role}\n{content}{IM_END}\n"))
        if add_generation_prompt:
            segs.append(Segment("<|im_start|>assistant\n"))
        return segs

    def end_of_turn(self, eos_token: str) -> str:
        return IM_END

    def jinja(self) -> str:
        default = ""
        if self.default_system is not None:
            default = ("{%- if loop.first and messages[0]['role'] != 'system' -%}"
                       "{{- '<|im_start|>system\\n' + " + jinja_str(self.default_system) + " + '<|im_end|>\\n' -}}"
                       "{%- endif -%}")
        return (
            JINJA_CONTENT_MACRO
            + "{%- for message in messages -%}" + default
            + "{%- if message['role'] == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
            "{%- generation -%}{{- render_content(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}"
            "{{- '\\n' -}}"
            "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' + render_content(message['content']) "
            "+ '<|im_end|>\\n' -}}{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
        )
