"""``vicuna_v1_short``: LLaVA-1.5's conversation format without its system prompt (the tiny default's).

    <s> USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

Exactly ``vicuna_v1`` with an empty default system prompt: the separators, roles and targets are the
same, so the format, the Jinja export and the stop string match LLaVA's. A model that is trained from
scratch gains nothing from the ~27-token system sentence but pays for it in every sample; a given system
message (``{"role": "system", ...}``) is still rendered where ``vicuna_v1`` renders it.
"""
from __future__ import annotations

from typing import Optional

from data_pipelines.templates.vicuna_v1 import VicunaV1Template


class VicunaV1ShortTemplate(VicunaV1Template):
    name = "vicuna_v1_short"
    default_system: Optional[str] = ""
