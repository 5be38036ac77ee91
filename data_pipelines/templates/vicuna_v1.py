"""``vicuna_v1``: LLaVA-1.5's conversation format (the ``v1`` / ``vicuna_v1`` mode).

    <s>{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>
    generation prompt: <s>{system} USER: <image>\\n{q} ASSISTANT:

Follows ``conv_vicuna_v1`` in haotian-liu/LLaVA ``llava/conversation.py`` (SeparatorStyle.TWO, sep=" ",
sep2="</s>", roles USER/ASSISTANT), which ``--version v1`` (scripts/v1_5/finetune.sh) and
``--conv-mode vicuna_v1`` (the v1.5 eval scripts) select. Its system prompt there reads "curious user ...
user's questions" (the "curious human ... human's questions" wording is ``conv_llava_v1`` / v0, not the
one LLaVA-1.5 trained with). ``<s>`` is the tokenizer's BOS, added by LLaVA's tokenizer call and here
written into the text; ``</s>`` is its EOS. Targets: ``" " + answer + "</s>"`` — the space belongs to the
answer, as in LLaVA where SentencePiece folds it into the answer's first token.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from data_pipelines.templates.base import JINJA_CONTENT_MACRO, ChatTemplate, Segment, jinja_str

LLAVA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the user's questions.")


class VicunaV1Template(ChatTemplate):
    name = "vicuna_v1"
    default_system: Optional[str] = LLAVA_V1_SYSTEM

    def _render(self, system: Optional[str], turns: Sequence[Tuple[str, str]], bos: str, eos: str,
                add_generation_prompt: bool) -> List[Segment]:
        segs = [Segment(bos + (system or "") + " ")]
        for role, content in turns:
            if role == "user":
                segs.append(Segment("USER: " + content + " "))
            else:
                segs += [Segment("ASSISTANT:"), Segment(" " + content + eos, target=True)]
        if add_generation_prompt:
            segs.append(Segment("ASSISTANT:"))
        return segs

    def jinja(self) -> str:
        return (
            JINJA_CONTENT_MACRO
            + "{%- if messages[0]['role'] == 'system' -%}"
            "{%- set system = render_content(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
            "{%- else -%}{%- set system = " + jinja_str(self.default_system or "") + " -%}"
            "{%- set loop_messages = messages -%}{%- endif -%}"
            "{{- bos_token -}}{{- system + ' ' -}}"
            "{%- for message in loop_messages -%}"
            "{%- if message['role'] == 'user' -%}{{- 'USER: ' + render_content(message['content']) + ' ' -}}"
            "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT:' -}}"
            "{%- generation -%}{{- ' ' + render_content(message['content']) -}}{{- eos_token -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
        )
