"""The normalised record every format reader produces, and the accounting of records that were skipped.

    rec = Record(id="42", messages=[{"role": "user", "content": "<image>\\nWhat is it?"},
                                    {"role": "assistant", "content": "A cat."}],
                 images=["/data/coco/42.jpg"], origin=Origin("train.jsonl", line=7))
    stats = SkipStats()
    try:
        ...
    except RecordError as err:
        stats.skip(err, strict=False)          # strict=True re-raises: the message names file, record, field
    stats.as_dict()   # {"total": 1, "by_reason": {"missing_image": 1}}  -> a training run's metrics file
    stats.log()       # one log line: "data: skipped 1 record(s): missing_image=1 (e.g. train.jsonl:7 ...)"

A record's ``messages`` hold roles ``system | user | assistant`` and string content in which every image
appears as one ``<image>`` marker; ``images`` lists one source per marker, in marker order: an absolute
(resolved) path, raw bytes, an HF ``{"bytes", "path"}`` dict or a PIL image. ``check_record`` is the
validation every reader shares, so all formats skip the same things for the same reasons.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

from mllm.constants import IMAGE_TOKEN as IMAGE_MARKER
ROLES = ("system", "user", "assistant")

# reason -> what it means; the keys are what SkipStats counts
SKIP_REASONS: Dict[str, str] = {
    "malformed_json": "a JSON line or file that does not parse",
    "malformed_record": "a record that is not an object, or lacks / mistypes a required field",
    "unknown_role": "a message whose role is not system / user / assistant (or a format's alias)",
    "empty_conversation": "no assistant turn with any content: nothing to learn from",
    "image_count_mismatch": "the number of <image> markers differs from the number of images",
    "missing_image": "an image file that does not exist",
    "unreadable_image": "an image that is truncated, corrupt, not an image, or over max_pixels",
    "too_long": "the images alone do not fit in max_length, or truncation left no target token",
}

logger = logging.getLogger("data_pipelines")


@dataclass(frozen=True)
class Origin:
    """Where a record came from, for error messages: a file and a 1-based line (JSONL) or 0-based index."""

    file: str
    line: Optional[int] = None  # JSONL: 1-based line number
    index: Optional[int] = None  # JSON array element / dataset row, 0-based

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}[{self.index}]"
        return self.file

    @property
    def key(self) -> Hashable:
        return (self.file, self.line, self.index)


@dataclass
class Record:
    id: str
    messages: List[Dict[str, str]]
    images: List[Any] = field(default_factory=list)
    origin: Origin = Origin("<memory>")

    @property
    def where(self) -> str:
        return f"{self.origin} (id={self.id})"

    @property
    def has_images(self) -> bool:
        return bool(self.images)


class RecordError(ValueError):
    """A record that cannot be used. ``reason`` is one of ``SKIP_REASONS``; the message names the file and
    line/index, the record id and the field."""

    def __init__(self, reason: str, message: str, origin: Optional[Origin] = None,
                 record_id: Optional[str] = None, field: Optional[str] = None):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {', '.join(SKIP_REASONS)}")
        self.reason, self.origin, self.record_id, self.field = reason, origin, record_id, field
        self.detail = message
        where = str(origin) if origin is not None else "<unknown file>"
        rec = f" record {record_id!r}" if record_id is not None else ""
        fld = f" field {field!r}" if field is not None else ""
        super().__init__(f"{where}{rec}{fld}: {message} [{reason}]")

    @property
    def key(self) -> Hashable:
        """Identifies the record, so that one bad record is counted once however often it is met."""
        if self.origin is None:
            return (str(self),)
        return (self.origin.key, self.record_id)  # the id tells apart in-memory records (no file, no line)


class SkipStats:
    """Counts skipped records by reason, exactly once per record (``key`` de-duplicates, also across
    ``merge``), with a few example messages per reason for the log. Picklable, so DataLoader workers can
    send theirs back to be merged."""

    def __init__(self, max_examples: int = 3, keep_events: bool = False):
        self.max_examples = max_examples
        # (reason, message, key) of each counted skip, for a streaming worker to forward (see dataset.py)
        self.keep_events = keep_events
        self.events: List[Tuple[str, str, Optional[Hashable]]] = []
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}
        self._keys: Dict[Hashable, str] = {}  # key -> reason

    def add(self, reason: str, message: str, key: Optional[Hashable] = None) -> bool:
        """Count one skip; returns False (and counts nothing) when ``key`` was already counted."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {', '.join(SKIP_REASONS)}")
        if key is not None:
            if key in self._keys:
                return False
            self._keys[key] = reason
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(message)
        if self.keep_events:
            self.events.append((reason, message, key))
        return True

    def add_events(self, events: Iterable[Sequence[Any]]) -> int:
        """Count ``(reason, message, key)`` triples (a sample's ``"skipped"``, a batch's ``"data_skips"``);
        returns how many were new."""
        return sum(self.add(reason, message, key) for reason, message, key in events)

    def skip(self, err: RecordError, strict: bool = False, key: Optional[Hashable] = None) -> None:
        """Strict: raise ``err``. Otherwise count it (once per record) and log it at debug level."""
        if strict:
            raise err
        if self.add(err.reason, str(err), err.key if key is None else key):
            logger.debug("skipped %s", err)

    def merge(self, other: "SkipStats") -> "SkipStats":
        """Add ``other``'s skips; records both have counted (same key) are counted once."""
        keyed_other = Counter(other._keys.values())
        unkeyed = other.counts - keyed_other
        for key, reason in other._keys.items():
            if key not in self._keys:
                self._keys[key] = reason
                self.counts[reason] += 1
        self.counts.update(unkeyed)
        for reason, msgs in other.examples.items():
            shown = self.examples.setdefault(reason, [])
            shown.extend(m for m in msgs[: max(0, self.max_examples - len(shown))] if m not in shown)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def as_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "by_reason": {r: self.counts[r] for r in sorted(self.counts)}}

    def summary(self) -> str:
        if not self.total:
            return "data: no records skipped"
        parts = ", ".join(f"{r}={self.counts[r]}" for r in sorted(self.counts))
        first = next(iter(self.examples[r][0] for r in sorted(self.counts) if self.examples.get(r)), "")
        return f"data: skipped {self.total} record(s): {parts}" + (f" (e.g. {first})" if first else "")

    def log(self, log: Optional[logging.Logger] = None) -> None:
        """One line on rank 0 (``RANK`` unset or 0): warning when anything was skipped, info otherwise."""
        if int(os.environ.get("RANK", "0")) != 0:
            return
        (log or logger).log(logging.WARNING if self.total else logging.INFO, self.summary())

    def __repr__(self) -> str:
        return f"SkipStats({self.as_dict()})"


# ---- shared validation --------------------------------------------------------------------------------
def count_markers(messages: Sequence[Dict[str, str]]) -> int:
    return sum(m["content"].count(IMAGE_MARKER) for m in messages)


def move_images_to_front(messages: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """LLaVA's placement: every ``<image>`` is removed where it stands and the first user turn becomes
    ``"<image>\\n" * k + rest`` (LLaVA's ``preprocess_multimodal``, generalised to k images)."""
    k = count_markers(messages)
    if k == 0:
        return messages
    out = [dict(m, content=m["content"].replace(IMAGE_MARKER, "").strip()) if IMAGE_MARKER in m["content"]
           else dict(m) for m in messages]
    first_user = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
    target = first_user if first_user is not None else 0
    out[target]["content"] = (IMAGE_MARKER + "\n") * k + out[target]["content"]
    return out


def check_record(record: Record, image_placement: str = "keep") -> Record:
    """Validate a record built by a reader (roles already mapped) and apply the image placement.

    Raises ``RecordError`` with the reason a reader counts. A leading assistant turn (before any user
    turn) is dropped, as LLaVA does; a system message is allowed only first.
    """
    if image_placement not in ("front", "keep"):
        raise ValueError(f"image_placement must be 'front' or 'keep', got {image_placement!r}")
    where = dict(origin=record.origin, record_id=record.id)
    msgs = record.messages
    for i, m in enumerate(msgs):
        if m["role"] not in ROLES:
            raise RecordError("unknown_role", f"role {m['role']!r} is not one of {', '.join(ROLES)}",
                              field=f"messages[{i}].role", **where)
        if m["role"] == "system" and i != 0:
            raise RecordError("malformed_record", "a system message may only come first",
                              field=f"messages[{i}].role", **where)
    start = 1 if msgs and msgs[0]["role"] == "system" else 0
    while start < len(msgs) and msgs[start]["role"] == "assistant":
        msgs = msgs[:start] + msgs[start + 1:]
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise RecordError("empty_conversation", "no assistant turn with content", field="messages", **where)
    n_markers = count_markers(msgs)
    if n_markers != len(record.images):
        raise RecordError("image_count_mismatch",
                          f"{n_markers} {IMAGE_MARKER} marker(s) in the messages but {len(record.images)} image(s)",
                          field="images", **where)
    if image_placement == "front":
        msgs = move_images_to_front(msgs)
    record.messages = msgs
    return record


def resolve_image(source: Any, image_root: Optional[str]) -> Any:
    """Paths become absolute under ``image_root``; bytes / dicts with bytes / PIL images pass through."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path if os.path.isabs(path) or image_root is None else os.path.join(image_root, path)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return source["bytes"]
        if source.get("path"):
            return resolve_image(source["path"], image_root)
        raise ValueError("an image dict needs 'bytes' or 'path'")
    return source
