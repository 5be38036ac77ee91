"""``llama3``: the Llama-3 Instruct chat format.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{q1}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{a1}<|eot_id|>...
    generation prompt: ... <|start_header_id|>assistant<|end_header_id|>\\n\\n

(shown wrapped; there are no newlines between turns). Follows the ``chat_template`` of
meta-llama/Meta-Llama-3-8B-Instruct: BOS (``<|begin_of_text|>``, the tokenizer's ``bos_token``) before
the first message, each message's content stripped (Jinja ``| trim``), no default system prompt.
Targets: the assistant content and ``<|eot_id|>``, Llama-3's end-of-turn token (also the stop string).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from data_pipelines.templates.base import JINJA_CONTENT_MACRO, ChatTemplate, Segment, jinja_str

EOT = "<|eot_id|>"


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


class Llama3Template(ChatTemplate):
    name = "llama3"
    default_system: Optional[str] = None

    def _render(self, system: Optional[str], turns: Sequence[Tuple[str, str]], bos: str, eos: str,
                add_generation_prompt: bool) -> List[Segment]:
        messages = ([("system", system)] if system is not None else []) + list(turns)
        segs = [Segment(bos)]
        for role, content in messages:
            if role == "assistant":
                segs += [Segment(_header(role)), Segment(content.strip() + EOT, target=True)]
            else:
                segs.append(Segment(_header(role) + content.strip() + EOT))
        if add_generation_prompt:
            segs.append(Segment(_header("assistant")))
        return segs

    def end_of_turn(self, eos_token: str) -> str:
        return EOT

    def jinja(self) -> str:
        if self.default_system is None:  # Llama-3's own template: no default system prompt
            prelude = "{%- set loop_messages = messages -%}"
        else:
            prelude = ("{%- if messages[0]['role'] != 'system' -%}{%- set loop_messages = [{'role': 'system', "
                       "'content': " + jinja_str(self.default_system) + "}] + messages -%}"
                       "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}")
        return (
            JINJA_CONTENT_MACRO + prelude
            + "{%- for message in loop_messages -%}"
            "{%- if loop.index0 == 0 -%}{{- bos_token -}}{%- endif -%}"
            "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
            "{%- if message['role'] == 'assistant' -%}"
            "{%- generation -%}{{- render_content(message['content']) | trim -}}{{- '<|eot_id|>' -}}"
            "{%- endgeneration -%}"
            "{%- else -%}{{- render_content(message['content']) | trim + '<|eot_id|>' -}}{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
        )
