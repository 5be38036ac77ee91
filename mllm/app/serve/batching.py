"""Several requests, one ``generate``: left-padded prompts, per-request stops, budgets and sampling.

    reqs = [GenRequest(prompt, max_new_tokens=32, stop=["."], on_delta=print), GenRequest(other, 8)]
    results = generate_batch(model, reqs)        # [GenResult(text, finish_reason, completion_tokens, ...)]

The prompts are left-padded into one (B, L) batch (positions come from the attention mask, so a row sees
the same positions as alone) and run through the backend's HF ``generate`` with greedy search and
``max_new_tokens`` = the largest budget. Per-request behaviour is added to that one call:

- ``_RowStops`` (a ``StoppingCriteria``) sees each new token of every row after every step: it streams the
  row's text, and ends the row on a stop id, a stop string, its own ``max_new_tokens`` or a cancellation
  (client gone, timeout). HF then pads that row and ``generate`` returns as soon as every row has ended.
- ``_RowSampler`` (a ``LogitsProcessor``) samples the rows with ``temperature > 0`` (top-p, each with its
  own ``torch.Generator``, seeded by the request's ``seed``) and forces that token through the greedy
  argmax; greedy rows are untouched. So a seeded answer does not depend on what it is batched with, and a
  greedy answer is the batch-1 greedy answer.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mllm.model import pad_left

from .adapter import EncodedPrompt, ServedModel
from .answer_text import AnswerText


@dataclass
class GenRequest:
    prompt: EncodedPrompt
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: Sequence[str] = ()
    on_delta: Optional[Callable[[str], None]] = None  # streamed text pieces, called on the generating thread
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int  # tokens generated, a final stop token included
    prompt_tokens: int
    token_ids: List[int] = field(default_factory=list)  # the answer's tokens (a final stop token not included)


class _RowStops(StoppingCriteria):
    def __init__(self, requests: Sequence[GenRequest], texts: Sequence[AnswerText], stop_ids: Sequence[int]):
        self.requests, self.texts, self.stop_ids = requests, texts, set(int(i) for i in stop_ids)
        self.done = [False] * len(requests)
        self.reasons: List[Optional[str]] = [None] * len(requests)
        self.counts = [0] * len(requests)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()  # (B,): the token each row got this step
        for r, (req, tok) in enumerate(zip(self.requests, last)):
            if self.done[r]:
                continue
            self.counts[r] += 1
            reason = None
            if tok in self.stop_ids:
                reason = "stop"
            else:
                delta, stopped = self.texts[r].push(tok)
                if delta and req.on_delta is not None:
                    req.on_delta(delta)
                if stopped:
                    reason = "stop"
                elif self.counts[r] >= req.max_new_tokens:
                    reason = "length"
            if reason is None and req.cancelled.is_set():
                reason = "cancelled"
            if reason is not None:
                self.done[r], self.reasons[r] = True, reason
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class _RowSampler(LogitsProcessor):
    def __init__(self, requests: Sequence[GenRequest], stops: _RowStops):
        self.requests, self.stops = requests, stops
        self.generators = {}
        for r, req in enumerate(requests):
            if req.temperature > 0:
                seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2 ** 63)
                self.generators[r] = torch.Generator().manual_seed(int(seed))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for r, gen in self.generators.items():  # scores: (B, V) float32 logits of this step
            if self.stops.done[r]:
                continue
            req = self.requests[r]
            probs = torch.softmax(scores[r].float().cpu() / req.temperature, dim=-1)  # (V,)
            if req.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # keep the smallest set whose mass reaches top_p (the most likely token always stays)
                drop = sorted_p.cumsum(0) - sorted_p >= req.top_p
                probs[order[drop]] = 0.0
            token = int(torch.multinomial(probs, 1, generator=gen))
            scores[r] = float("-inf")
            scores[r, token] = 0.0
        return scores


def generate_batch(model: ServedModel, requests: Sequence[GenRequest]) -> List[GenResult]:
    """Run ``requests`` as one left-padded batch (see the module docstring); results in request order."""
    if not requests:
        return []
    texts = [AnswerText(model.decode, r.stop, incremental=r.on_delta is not None) for r in requests]
    stops = _RowStops(requests, texts, model.stop_ids)
    ids, mask = pad_left([r.prompt.ids for r in requests], model.pad_token_id)  # (B, L) each
    processors = LogitsProcessorList()
    if any(r.temperature > 0 for r in requests):
        processors.append(_RowSampler(requests, stops))
    model.generate(ids, mask, model.collate([r.prompt.inputs for r in requests]),
                   max_new_tokens=max(r.max_new_tokens for r in requests), do_sample=False, num_beams=1,
                   eos_token_id=model.stop_ids, stopping_criteria=StoppingCriteriaList([stops]),
                   logits_processor=processors)
    results = []
    for r, req in enumerate(requests):
        rest = texts[r].finish()
        if rest and req.on_delta is not None:
            req.on_delta(rest)
        reason = stops.reasons[r] or "length"  # generate ended on its own max_new_tokens
        results.append(GenResult(texts[r].text, reason, stops.counts[r], req.prompt.length, list(texts[r].ids)))
    return results
