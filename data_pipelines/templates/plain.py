"""``plain``: stage-1 (feature alignment) captions — the image(s), then the caption, nothing else.

    <s><image>{caption}</s>
    generation prompt: <s><image>

Follows ``conv_llava_plain`` / ``preprocess_plain`` in haotian-liu/LLaVA (``--version plain`` in
scripts/v1_5/pretrain.sh): the human turn is replaced by its image marker(s) alone (LLaVA drops the
instruction text), and the loss is on the caption. One difference: LLaVA ends the caption with its
separator ``"\\n"``; here it ends with the tokenizer's EOS, so a captioner stops by itself. The targets
are ``caption + eos``. System messages are ignored; several turns render one after another.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from data_pipelines.templates.base import IMAGE_MARKER, JINJA_CONTENT_MACRO, ChatTemplate, Segment


class PlainTemplate(ChatTemplate):
    name = "plain"
    default_system: Optional[str] = None

    def _render(self, system: Optional[str], turns: Sequence[Tuple[str, str]], bos: str, eos: str,
                add_generation_prompt: bool) -> List[Segment]:
        segs = [Segment(bos)]
        for role, content in turns:
            if role == "user":
                segs.append(Segment(IMAGE_MARKER * content.count(IMAGE_MARKER)))
            else:
                segs.append(Segment(content + eos, target=True))
        return segs

    def jinja(self) -> str:
        return (
            JINJA_CONTENT_MACRO
            + "{{- bos_token -}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            "{%- if message['content'] is string -%}{{- '<image>' * message['content'].count('<image>') -}}"
            "{%- else -%}{%- for part in message['content'] -%}"
            "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}{{- '<image>' -}}{%- endif -%}"
            "{%- endfor -%}{%- endif -%}"
            "{%- elif message['role'] == 'assistant' -%}"
            "{%- generation -%}{{- render_content(message['content']) -}}{{- eos_token -}}{%- endgeneration -%}"
            "{%- endif -%}{%- endfor -%}"
        )
