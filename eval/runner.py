"""Run a model on a benchmark: batched greedy generation, resumable per row, sharded across ranks.

    from eval.runner import BatchGenerator, Question, load_model, run_predictions
    model = load_model("ckpt", device="cpu")                       # MultimodalLM, eval mode
    gen = BatchGenerator(model, max_new_tokens=16)                 # the model's chat template
    gen([Question(0, "<image>\\nWhat colour is it?", [img]), Question(1, "Say hi.", [])])  # -> [str, str]

    outcome = run_predictions(gen, keys, prepare, "out/", batch_size=8, key_field="index",
                              fingerprint={...})
    outcome.predictions      # {key: prediction} on rank 0 (None on the other ranks)

A question's ``text`` is the user turn with one ``<image>`` marker per image, in image order. It is
wrapped in the model's chat template (``data_pipelines.templates``, ``model.config.chat_template``),
each marker becomes ``model.num_image_tokens(hw)`` image-token ids, and the batch is decoded greedily
with left padding; the new tokens up to the end of the turn are decoded and stripped. Each prompt (or
the prefix that rows with the same images share, e.g. MMBench's circular passes) is prefilled on its own
and the decode steps run batched: on CPU that is where batching pays (see ``_generate_prefilled``).
Batch size does not change the predictions (masked padding, mask-derived positions; tests check it).

``run_predictions`` works on one process or under ``torchrun --nproc_per_node N`` (torch.distributed env
vars; the group uses gloo, which is all an eval needs: a few barriers). Rank r takes rows r, r+N, ...,
appends each finished batch to ``raw_predictions.part-0000r.jsonl`` (flushed), and after a barrier rank 0
merges every part into ``raw_predictions.jsonl`` in data order, as VLMEvalKit merges its per-rank files
(the output directory must be shared by the ranks). A rerun reads every row already in the merged file or
any part file and generates only the rest, so a crashed run resumes without duplicating a row; a torn last
line (killed mid-write) is dropped. ``raw_predictions.meta.json`` holds the run's fingerprint (model,
data hash, prompt version, generation settings): resuming into a directory made by a different run is an
error unless ``overwrite=True``. A row whose inputs are bad (undecodable image, prompt too long) gets an
empty prediction and an ``error`` in its record, is counted, and does not stop the run (``strict=True``
raises instead).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch

from data_pipelines.processor import MultimodalProcessor

log = logging.getLogger("mllm.eval")

MERGED_FILE = "raw_predictions.jsonl"
META_FILE = "raw_predictions.meta.json"
PART_PREFIX = "raw_predictions.part-"
# Rows prepared (images decoded, prompts tokenised) together and sorted by length before batching, in
# units of the batch size: similar lengths share a batch, so little compute goes into padding.
SORT_WINDOW_BATCHES = 8
MIN_SHARED_PREFIX = 16  # tokens; below this a separate prefix pass costs more than it saves


# ---- questions and generation --------------------------------------------------------------------------
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
        from transformers.cache_utils import DynamicLayer

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
    from transformers import DynamicCache

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


def load_model(path: str, device: str = "cpu", bf16: bool = False):
    """``MultimodalLM.from_pretrained`` on ``device`` (``cuda`` picks the local rank's GPU), eval mode."""
    from mllm.model import MultimodalLM

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return MultimodalLM.from_pretrained(path, device=device, dtype=torch.bfloat16 if bf16 else None).eval()


def model_fingerprint(path: str) -> Dict[str, Any]:
    """The checkpoint's path and its files' sizes and mtimes: a retrained checkpoint in the same place
    does not silently resume an old run's predictions."""
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and (name.endswith(".safetensors") or name.endswith(".json")):
            st = os.stat(full)
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"path": os.path.abspath(path), "files": files}


# ---- ranks ---------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process initialised the group, so it also tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, value: int) -> int:
        """``value`` summed over ranks (every rank gets the total)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(total)
        return int(total.item())


def init_distributed() -> DistContext:
    """Join the torchrun group when ``WORLD_SIZE`` > 1 (gloo: barriers only, so CPU and GPU alike)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)


def shutdown_distributed(ctx: DistContext) -> None:
    """Barrier, then destroy the group this process created (see ENVIRONMENT.md on the gloo exit crash:
    the caller should then leave with ``os._exit``)."""
    if ctx.world_size > 1 and ctx.owns_group:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


# ---- the per-row prediction files --------------------------------------------------------------------
class PredictionStore:
    """``raw_predictions.jsonl`` (merged) and ``raw_predictions.part-*.jsonl`` (one per rank) in ``out_dir``.

    A record is ``{key_field: key, "prediction": str, "prompt_tokens": int, "new_tokens": int}`` plus
    ``"error"`` when the row could not be run. For MMBench (``key_field="index"``) the merged file is also
    a valid ``--predictions`` file.
    """

    def __init__(self, out_dir: str, key_field: str, rank: int = 0):
        self.out_dir = out_dir
        self.key_field = key_field
        self.rank = rank
        self.part_path = os.path.join(out_dir, f"{PART_PREFIX}{rank:05d}.jsonl")
        self.merged_path = os.path.join(out_dir, MERGED_FILE)
        self._file = None

    def files(self) -> List[str]:
        if not os.path.isdir(self.out_dir):
            return []
        parts = sorted(n for n in os.listdir(self.out_dir) if n.startswith(PART_PREFIX) and n.endswith(".jsonl"))
        merged = [MERGED_FILE] if os.path.exists(self.merged_path) else []
        return [os.path.join(self.out_dir, n) for n in merged + parts]

    def read(self, path: str) -> List[Dict[str, Any]]:
        """Complete records of one file; a torn last line (a run killed mid-write) is ignored."""
        records = []
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        # every complete record ends with "\n", so the last element is "" unless the write was torn
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e}); delete the file or pass "
                                 "--overwrite to start over") from None
            if not isinstance(record, dict) or self.key_field not in record or "prediction" not in record:
                raise ValueError(f"{path}, line {number}: expected an object with {self.key_field!r} and "
                                 "'prediction'")
            records.append(record)
        return records

    def done(self) -> Dict[Hashable, Dict[str, Any]]:
        """Every finished row in the merged file and all part files (first record of a key wins)."""
        out: Dict[Hashable, Dict[str, Any]] = {}
        for path in self.files():
            for record in self.read(path):
                out.setdefault(record[self.key_field], record)
        return out

    def open(self) -> None:
        """Open this rank's part file for appending, cutting a torn last line first."""
        os.makedirs(self.out_dir, exist_ok=True)
        if os.path.exists(self.part_path):
            with open(self.part_path, "rb+") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1  # 0 when no line is complete
                if keep != len(data):
                    f.truncate(keep)
        self._file = open(self.part_path, "a", encoding="utf-8")

    def append(self, results: Sequence[Generated]) -> None:
        lines = []
        for g in results:
            record: Dict[str, Any] = {self.key_field: g.key, "prediction": g.prediction,
                                      "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens}
            if g.error:
                record["error"] = g.error
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        # one write per batch, flushed: a killed process loses nothing written, and a crash mid-write
        # tears at most the last line (no fsync: surviving a power cut is not worth a disk sync per batch)
        self._file.write("".join(lines))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, keys: Sequence[Hashable]) -> Dict[Hashable, Dict[str, Any]]:
        """Write every known row of ``keys`` to the merged file in that order; drop the part files."""
        done = self.done()
        tmp = self.merged_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for key in keys:
                if key in done:
                    f.write(json.dumps(done[key], ensure_ascii=False) + "\n")
        os.replace(tmp, self.merged_path)  # the parts are deleted only once the merged file is whole
        for path in self.files():
            if path != self.merged_path:
                os.remove(path)
        return {k: done[k] for k in keys if k in done}

    def clear(self) -> None:
        for path in self.files() + [os.path.join(self.out_dir, META_FILE)]:
            if os.path.exists(path):
                os.remove(path)


def check_fingerprint(out_dir: str, fingerprint: Mapping[str, Any], overwrite: bool, key_field: str) -> None:
    """Start fresh, resume the same run, or refuse to mix two runs' predictions in one directory."""
    store = PredictionStore(out_dir, key_field)
    meta_path = os.path.join(out_dir, META_FILE)
    if overwrite:
        store.clear()
    elif store.files():
        old = None
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f)
        if old != json.loads(json.dumps(fingerprint)):
            diff = sorted(k for k in set(old or {}) | set(fingerprint) if (old or {}).get(k) != fingerprint.get(k))
            raise ValueError(f"{out_dir} holds predictions of a different run ({', '.join(diff) or 'no record of it'} "
                             f"differ); use a new --out directory or pass --overwrite to start over")
    os.makedirs(out_dir, exist_ok=True)
    from eval.report import write_json

    write_json(meta_path, dict(fingerprint))


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    predictions: Optional[Dict[Hashable, str]]  # rank 0: every row's prediction; other ranks: None
    errors: Dict[Hashable, str]  # rank 0: rows that could not be run, with the reason
    stats: Dict[str, Any]


def shard_positions(n: int, rank: int, world_size: int,
                    group_of: Optional[Callable[[int], Hashable]] = None) -> List[int]:
    """The row positions rank ``rank`` runs, group by group.

    Rows are taken in groups (``group_of(position)``; every row its own group when None), groups in
    order of first appearance, strided over ranks: rank r gets groups r, r+W, ... . Keeping a group on
    one rank and its rows adjacent lets them share a batch (and their prompt prefix); striding keeps a
    resumed run balanced whatever the world size.
    """
    if group_of is None:
        return list(range(rank, n, world_size))
    groups: Dict[Hashable, List[int]] = {}
    for p in range(n):
        groups.setdefault(group_of(p), []).append(p)
    return [p for g, members in enumerate(groups.values()) if g % world_size == rank for p in members]


def run_predictions(generator: BatchGenerator, keys: Sequence[Hashable], prepare: Callable[[int], Question],
                    out_dir: str, *, batch_size: int = 8, key_field: str = "index",
                    fingerprint: Optional[Mapping[str, Any]] = None, ctx: Optional[DistContext] = None,
                    overwrite: bool = False, strict: bool = False, progress: bool = True,
                    group_of: Optional[Callable[[int], Hashable]] = None) -> RunOutcome:
    """Predictions for every key (``prepare(position) -> Question`` builds row ``keys[position]``).

    ``group_of(position)`` names rows that belong together (MMBench: the circular passes of one question,
    which share their image and most of their prompt): they run on one rank, side by side. See the module
    docstring for files, resume and sharding. Every rank must call this.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(set(keys)) != len(keys):
        raise ValueError("the benchmark's row keys are not unique")
    ctx = ctx or DistContext()
    if ctx.is_main:
        check_fingerprint(out_dir, fingerprint or {}, overwrite, key_field)
    ctx.barrier()  # nobody reads the directory before rank 0 has cleared or validated it

    store = PredictionStore(out_dir, key_field, ctx.rank)
    done = store.done()
    shard = shard_positions(len(keys), ctx.rank, ctx.world_size, group_of)
    todo = [p for p in shard if keys[p] not in done]
    mine = len(shard)
    if ctx.is_main:
        log.info("%d rows: %d already predicted, %d to run over %d rank(s)", len(keys),
                 len(done.keys() & set(keys)), len(keys) - len(done.keys() & set(keys)), ctx.world_size)

    store.open()
    started = time.perf_counter()
    counted = (generator.prompt_tokens, generator.prefill_tokens)
    generated = 0
    bar = tqdm(total=mine, initial=mine - len(todo), unit="q", desc=f"predict (rank {ctx.rank})",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    try:
        window = batch_size * SORT_WINDOW_BATCHES if batch_size > 1 else 1
        for w in range(0, len(todo), window):
            encoded = _prepare_window(generator, keys, prepare, todo[w:w + window], strict)
            # longest first (the largest batch runs while memory is fresh); similar lengths share a batch
            # (little padding), and rows with the same images stay together (they share a prefix)
            longest: Dict[Tuple, int] = {}
            for e in encoded:
                longest[e.image_key] = max(longest.get(e.image_key, 0), len(e.ids))
            encoded.sort(key=lambda e: (-longest[e.image_key], e.image_key, -len(e.ids)))
            for b in range(0, len(encoded), batch_size):
                batch = encoded[b:b + batch_size]
                results = generator.generate(batch)
                store.append(results)
                generated += len(results)
                bar.update(len(results))
    finally:
        bar.close()
        store.close()
    seconds = time.perf_counter() - started

    ctx.barrier()  # every part file is complete
    generated_all = ctx.sum(generated)
    stats = {"rows": len(keys), "generated_now": generated_all, "resumed": len(keys) - generated_all,
             "seconds": round(seconds, 3), "world_size": ctx.world_size, "batch_size": batch_size,
             "max_new_tokens": generator.max_new_tokens,
             # this rank's rate; ranks run in parallel, so the run's rate is about world_size times it
             "questions_per_s_per_rank": round(generated / seconds, 3) if generated and seconds > 0 else None}
    prompt_tokens = generator.prompt_tokens - counted[0]
    if prompt_tokens:  # the part of the prompt tokens that prefix sharing did not save (this rank)
        stats["prefill_share"] = round((generator.prefill_tokens - counted[1]) / prompt_tokens, 4)
    if not ctx.is_main:
        return RunOutcome(None, {}, stats)
    merged = store.merge(keys)
    missing = [k for k in keys if k not in merged]
    if missing:
        raise RuntimeError(f"{len(missing)} row(s) have no prediction after every rank finished "
                           f"(e.g. {missing[:5]}); was {out_dir} shared by all ranks?")
    errors = {k: r["error"] for k, r in merged.items() if r.get("error")}
    stats["errors"] = len(errors)
    return RunOutcome({k: r["prediction"] for k, r in merged.items()}, errors, stats)


def _prepare_window(generator: BatchGenerator, keys: Sequence[Hashable], prepare: Callable[[int], Question],
                    positions: Sequence[int], strict: bool) -> List[Encoded]:
    questions: List[Question] = []
    failed: List[Encoded] = []
    for p in positions:
        try:
            questions.append(prepare(p))
        except ValueError as e:  # bad image data and the like: counted, the run goes on
            if strict:
                raise
            failed.append(Encoded(keys[p], error=str(e)))
    encoded = generator.encode(questions)
    if strict:
        bad = [e for e in encoded if e.error]
        if bad:
            raise ValueError(f"row {bad[0].key}: {bad[0].error}")
    return encoded + failed
