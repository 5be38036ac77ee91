"""Chat templates by exact name: ``plain``, ``vicuna_v1``, ``vicuna_v1_short`` (no system prompt), ``llama3``,
``chatml``.

    from data_pipelines.templates import get_template
    tpl = get_template("vicuna_v1")                    # or get_template("chatml", system="Be brief.")
    tpl.render(messages, bos_token=tok.bos_token, eos_token=tok.eos_token)   # [Segment(text, target)]
    tpl.jinja()                                        # the same format as an HF chat_template string

Unknown names raise a ValueError listing the known ones. A new template is a ``ChatTemplate`` subclass
in its own file, added to ``TEMPLATES`` here. See ``base.py`` for the interface.
"""
from __future__ import annotations

from typing import Optional, Type

from mllm.registry import Registry

from data_pipelines.templates.base import ChatTemplate, Segment, content_text
from data_pipelines.templates.chatml import ChatMLTemplate
from data_pipelines.templates.llama3 import Llama3Template
from data_pipelines.templates.plain import PlainTemplate
from data_pipelines.templates.vicuna_v1 import VicunaV1Template
from data_pipelines.templates.vicuna_v1_short import VicunaV1ShortTemplate

TEMPLATES: Registry[Type[ChatTemplate]] = Registry("chat template")
for _cls in (PlainTemplate, VicunaV1Template, VicunaV1ShortTemplate, Llama3Template, ChatMLTemplate):
    TEMPLATES.add(_cls.name, _cls)


def get_template(name: str, system: Optional[str] = None) -> ChatTemplate:
    """A template instance; ``system`` replaces its default system prompt."""
    return TEMPLATES.get(name)(system=system)


__all__ = ["TEMPLATES", "ChatTemplate", "Segment", "content_text", "get_template", "ChatMLTemplate",
           "Llama3Template", "PlainTemplate", "VicunaV1Template", "VicunaV1ShortTemplate"]
