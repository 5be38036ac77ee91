"""Batched greedy generation for benchmark questions, with prefix sharing.

    gen = BatchGenerator(model, max_new_tokens=16)                 # the model's MultimodalProcessor
    gen([Question(0, "<image>\\nWhat colour is it?", [img]), Question(1, "Say hi.", [])])  # -> [str, str]

A question's ``text`` is the user turn with one ``<image>`` marker per image, in image order. The model's
``MultimodalProcessor`` wraps it in the chat template and tokenises it as training does (each marker
becomes ``model.num_image_tokens(hw)`` image-token ids); the batch is decoded greedily with left padding
and the new tokens up to the end of the turn are decoded and stripped. Each prompt (or the prefix that
rows with the same images share, e.g. MMBench's circular passes) is prefilled on its own and the decode
steps run batched: on CPU that is where batching pays (see ``_generate_prefilled``). Batch size does not
change the predictions (masked padding, mask-derived positions; tests check it).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from data_pipelines.processor import MultimodalProcessor

MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefix pass costs more than it saves


@dataclass
class Question:
    key: Hashable  # MMBench index (int) or MMMU id (str)
    text: str  # the user turn, one <image> marker per image
    images: List[Any] = field(default_factory=list)  # PIL images in marker order


@dataclass
class Encoded:
    key: Hashable
    ids: List[int] = field(default_factory=list)  # prompt token ids, image markers expanded
    images: List[Any] = field(default_factory=list)
    error: Optional[str] = None  # set when the row cannot be run; it then gets an empty prediction
    image_key: Tuple = ()  # content hashes of the images: rows with equal keys may share a prefix


@dataclass
class Generated:
    key: Hashable
    prediction: str
    prompt_tokens: int
    new_tokens: int
    error: Optional[str] = None


class BatchGenerator:
    """Greedy generation for a batch of questions with one model (see the module docstring).

    Args:
        model: a ``MultimodalLM`` in eval mode, on its device.
        max_new_tokens: generation budget per question.
        template: chat template name (default ``model.config.chat_template``); ``system`` overrides its
            system prompt.
        processor: the ``MultimodalProcessor`` (default: ``MultimodalProcessor.for_model(model, template,
            system)``); prompts, pixels, padding and stop ids all come from it.
        share_prefixes: run the common prompt prefix of rows with the same images once per batch
            (MMBench's circular passes of a question differ only in the order of the options).

    ``prefill_tokens`` counts the prompt tokens that went through the LLM's prefill (``prompt_tokens``
    counts those in the prompts): their ratio is what prefix sharing saved.
    """

    def __init__(self, model, *, max_new_tokens: int = 16, template: Optional[str] = None,
                 system: Optional[str] = None, processor: Optional[MultimodalProcessor] = None,
                 share_prefixes: bool = True):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.tokenizer = model.tokenizer
        self.max_new_tokens = max_new_tokens
        if processor is None:
            processor = MultimodalProcessor.for_model(model, template=template, system=system)
        self.processor = processor
        self.template = processor.template
        self.template_name = processor.template.name
        processor.pad_token_id  # batched generation needs a pad token: fail here, not mid-run
        self.stop_ids = processor.stop_ids
        self.max_length = int(getattr(model.llm.config, "max_position_embeddings", 0) or 0)
        self.share_prefixes = share_prefixes
        self.prompt_tokens = 0
        self.prefill_tokens = 0

    # ---- prompts -> ids ---------------------------------------------------------------------------------
    def messages(self, question: Question) -> List[Dict[str, Any]]:
        return [{"role": "user", "content": question.text}]

    def prompt_text(self, question: Question) -> str:
        return self.processor.render(self.messages(question))

    def encode(self, questions: Sequence[Question]) -> List[Encoded]:
        """Render and tokenise through the processor; each image marker becomes its image's token run."""
        out: List[Encoded] = []
        marker = self.processor.image_token
        for q in questions:
            found = self.prompt_text(q).count(marker)
            if found != len(q.images):
                out.append(Encoded(q.key, error=f"the prompt has {found} {marker} marker(s) "
                                                f"but the row has {len(q.images)} image(s)"))
                continue
            # pixels are made per batch in _generate_ids; the ids need only the image sizes
            prompt = self.processor.encode_prompt(self.messages(q), q.images, pixels=False)
            enc = Encoded(q.key, prompt.input_ids, list(q.images), image_key=tuple(_image_hash(im) for im in q.images))
            if self.max_length and len(enc.ids) + self.max_new_tokens > self.max_length:
                enc.error = (f"prompt is {len(enc.ids)} tokens; with max_new_tokens={self.max_new_tokens} it "
                             f"exceeds the model's {self.max_length} positions")
            out.append(enc)
        return out

    # ---- ids -> text ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, batch: Sequence[Encoded]) -> List[Generated]:
        """Generate for encoded rows (rows with an error get an empty prediction and no compute)."""
        results: Dict[int, Generated] = {}
        live = [(i, e) for i, e in enumerate(batch) if not e.error]
        for i, e in enumerate(batch):
            if e.error:
                results[i] = Generated(e.key, "", len(e.ids), 0, e.error)
        if live:
            texts, counts = self._generate_ids([e for _, e in live])
            for (i, e), text, n in zip(live, texts, counts):
                results[i] = Generated(e.key, text, len(e.ids), n)
        return [results[i] for i in range(len(batch))]

    def _generate_ids(self, rows: Sequence[Encoded]) -> Tuple[List[str], List[int]]:
        model, tok = self.model, self.tokenizer
        input_ids, mask = self.processor.pad([e.ids for e in rows])  # (B, L) each, left-padded
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        images = [im for e in rows for im in e.images]
        kwargs: Dict[str, Any] = {}
        if images:
            pixels = self.processor.images(images)  # pixel_values (N, T_max, 3, S, S), image_sizes (N, 2)
            kwargs = {"pixel_values": pixels["pixel_values"].to(model.device),
                      "image_sizes": pixels["image_sizes"].to(model.device)}
        gen_kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                          eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id)
        self.prompt_tokens += sum(len(e.ids) for e in rows)
        if self.share_prefixes:
            groups = _prefix_groups(rows)
        else:
            groups = [([r], len(e.ids) - 1) for r, e in enumerate(rows)]
        new = None
        if all(p > 0 for _, p in groups):
            embeds = model.embed_inputs(input_ids, **kwargs)  # (B, L, D), image features in place
            new = self._generate_prefilled(rows, embeds, groups, gen_kwargs)
        if new is None:  # a cache layout the split prefill does not handle: one padded batch
            self.prefill_tokens += sum(len(e.ids) for e in rows)
            new = model.generate(input_ids, mask, **kwargs, **gen_kwargs)  # (B, n)
        texts, counts = [], []
        for row in new.tolist():
            cut = next((j for j, t in enumerate(row) if t in self.stop_ids), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
            counts.append(cut)
        return texts, counts

    def _generate_prefilled(self, rows: Sequence[Encoded], embeds: torch.Tensor,
                            groups: List[Tuple[List[int], int]], gen_kwargs: Dict[str, Any]) -> Optional[torch.Tensor]:
        """Prefill each group's prompt prefix on its own, then decode the whole batch together.

        On a CPU the prefill is compute-bound (image prompts are hundreds of tokens), so batching it gains
        nothing and padding it wastes work; the decode steps are overhead-bound, and batching them is what
        pays. A group's members (rows with the same images and a common token prefix, e.g. MMBench's
        circular passes of one question) share one prefill of that prefix; every row keeps at least its
        last prompt token for the batched step that yields its first answer token. The per-group KV
        caches are left-padded with masked zeros into one batch cache; the members' own suffixes follow
        after a gap of padding, and positions come from the attention mask (HF generate), so every row
        sees exactly the positions and keys of its full prompt. Returns None when the LLM's cache is not
        a plain per-layer key/value cache (sliding-window or hybrid layers).
        """
        llm = self.model.llm
        B, L, D = embeds.shape
        lens = [len(e.ids) for e in rows]
        P = max(p for _, p in groups)
        S = max(lens[r] - p for members, p in groups for r in members)
        owner = [0] * B
        prefixes = []
        for g, (members, p) in enumerate(groups):
            first = members[0]
            start = L - lens[first]
            cache = llm(inputs_embeds=embeds[first:first + 1, start:start + p], use_cache=True,
                        logits_to_keep=1).past_key_values  # per layer (1, kv_heads, p, head_dim)
            if any(type(layer) is not DynamicLayer or layer.keys.shape[-2] != p for layer in cache.layers):
                return None
            prefixes.append(cache)
            for r in members:
                owner[r] = g
        cache = _batch_cache(prefixes, owner, P)  # per layer (B, kv_heads, P, head_dim)

        full = embeds.new_zeros(B, P + S, D)  # (B, P + S, D): only the last S columns are run; P is cached
        full_mask = torch.zeros(B, P + S, dtype=torch.long, device=embeds.device)  # (B, P + S)
        for r in range(B):
            p = groups[owner[r]][1]
            s = lens[r] - p
            full_mask[r, P - p:P] = 1
            full[r, P + S - s:] = embeds[r, L - s:]
            full_mask[r, P + S - s:] = 1
        self.prefill_tokens += sum(p for _, p in groups) + sum(lens[r] - groups[owner[r]][1] for r in range(B))
        return llm.generate(inputs_embeds=full, attention_mask=full_mask, past_key_values=cache, **gen_kwargs)

    def __call__(self, questions: Sequence[Question]) -> List[str]:
        return [g.prediction for g in self.generate(self.encode(questions))]


def _batch_cache(prefixes: Sequence[Any], owner: Sequence[int], width: int):
    """Per-group caches, (1, kv_heads, p_g, head_dim) per layer -> one cache, (B, kv_heads, width,
    head_dim) per layer: row r holds its group's keys and values right-aligned, zeros (masked) before."""
    layers = []
    for i in range(len(prefixes[0].layers)):
        keys, values = [], []
        for g in owner:
            layer = prefixes[g].layers[i]
            gap = width - layer.keys.shape[-2]
            keys.append(torch.nn.functional.pad(layer.keys, (0, 0, gap, 0)))
            values.append(torch.nn.functional.pad(layer.values, (0, 0, gap, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(layers)


def _image_hash(image) -> Tuple:
    return (image.size, image.mode, hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())


def _prefix_groups(rows: Sequence[Encoded]) -> List[Tuple[List[int], int]]:
    """Rows with the same images, grouped, with the length of the token prefix they share: ``[(members,
    prefix_len)]`` covering every row. Each member keeps at least its last token for its own prefill (it
    yields the first answer token); a group whose common prefix is short is split into single rows."""
    by_images: Dict[Tuple, List[int]] = {}
    for r, e in enumerate(rows):
        by_images.setdefault(e.image_key, []).append(r)
    groups: List[Tuple[List[int], int]] = []
    for members in by_images.values():
        common = min(len(rows[r].ids) for r in members) - 1
        first = rows[members[0]].ids
        for r in members[1:]:
            ids = rows[r].ids
            n = 0
            while n < common and ids[n] == first[n]:
                n += 1
            common = n
        if len(members) > 1 and common >= MIN_SHARED_PREFIX:
            groups.append((members, common))
        else:
            groups += [([r], len(rows[r].ids) - 1) for r in members]
    return groups
