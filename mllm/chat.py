"""Chat with a model: conversation state, prompts in the training format, images, streamed generation.

    from mllm.chat import ChatSession, GenerationSettings, load_backend, run_interactive
    backend = load_backend("ckpt/")                  # an mllm checkpoint, or an export (Llava/LlavaNext/remote)
    chat = ChatSession(backend, GenerationSettings(max_new_tokens=64), system=None)
    chat.attach_image("cat.png")                     # goes with the next user turn; several allowed
    chat.ask("What is in the image?")                # -> the answer; ask(..., streamer=...) streams it
    chat.ask("And what colour is it?")               # earlier turns and their images stay in the context
    chat.reset()
    run_interactive(chat, sys.stdin, sys.stdout, sys.stderr)   # the `mllm chat` loop (/image /reset /exit)

Two backends behind one interface (``ChatBackend``: ``render``, ``encode``, ``generate``, ``decode``):

- ``MllmBackend``, an mllm checkpoint (``MultimodalLM.from_pretrained``). Prompts and pixels come from the
  model's ``MultimodalProcessor`` (``encode_prompt``), the object that also builds the training samples, so
  chat sees exactly the training format.
- ``TransformersBackend``, an exported checkpoint run with plain transformers: ``AutoProcessor`` +
  ``AutoModelForImageTextToText`` (a text-only causal LM: ``AutoTokenizer`` + ``AutoModelForCausalLM``),
  the processor's ``apply_chat_template`` and image handling. A remote-code export (``auto_map`` in its
  config.json) runs only with ``trust_remote_code=True``, because that executes the export's Python files.

A user turn is LLaVA style: its images first, one ``<image>`` marker each, then the text. Every turn
re-encodes the whole conversation (earlier images included). Greedy unless ``temperature > 0``.
What a user can get wrong (an unreadable image, an image for a model that cannot take one, a prompt
longer than the model's context, an ``<image>`` typed into the text) raises ``ChatError`` (a
``ValueError``) and leaves the conversation as it was before the turn.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, TextIO

import torch
from transformers import TextStreamer

from data_pipelines.images import ImageLoadError, load_image
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.tokenize import stop_token_ids
from mllm.checkpoint import load_pretrained
from mllm.config import CONFIG_NAME
from mllm.constants import IMAGE_TOKEN as IMAGE_MARKER, MAX_IMAGE_PIXELS


class ChatError(ValueError):
    """An input the chat cannot use; the conversation is unchanged."""


# ---- settings and prompts ----------------------------------------------------------------------------------
@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")

    def sampling_kwargs(self) -> Dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Prompt:
    text: str  # the chat template's rendering, one <image> marker per image
    input_ids: torch.Tensor  # (1, L), image markers expanded to their token runs
    model_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_sizes, ...
    num_image_tokens: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


# ---- backends ----------------------------------------------------------------------------------------------------
class ChatBackend:
    """What a chat needs from a model. Subclasses set the attributes and implement ``render``/``encode``/
    ``generate``."""

    kind = ""
    source: str = ""
    tokenizer: Any = None
    image_token: Optional[str] = None  # None: the model takes no images (``no_images_reason`` says why)
    no_images_reason: str = ""
    context_length: Optional[int] = None  # positions the model can attend over (prompt + answer)
    stop_ids: List[int] = []
    max_pixels: int = MAX_IMAGE_PIXELS

    @property
    def accepts_images(self) -> bool:
        return self.image_token is not None

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        raise NotImplementedError

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        raise NotImplementedError

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        """The new token ids (the stop token included when generation stopped on one)."""
        raise NotImplementedError

    def describe_image(self, image: Any) -> str:
        return f"{image.width}x{image.height}"

    def decode(self, new_ids: Sequence[int]) -> str:
        cut = next((j for j, t in enumerate(new_ids) if t in self.stop_ids), len(new_ids))
        return self.tokenizer.decode(list(new_ids[:cut]), skip_special_tokens=True).strip()


class MllmBackend(ChatBackend):
    """A ``MultimodalLM``; prompts and images exactly as the training data pipeline makes them."""

    kind = "mllm"

    def __init__(self, model, source: str = "<memory>"):
        cfg = model.config
        self.model, self.source, self.tokenizer = model, source, model.tokenizer
        self.processor = MultimodalProcessor.for_model(model)
        self.template = self.processor.template
        self.max_pixels = self.processor.max_pixels
        try:
            self.processor.image_token_id
            self.image_token = cfg.image_token
        except ValueError as e:
            self.image_token, self.no_images_reason = None, str(e)
        limits = [int(v) for v in (cfg.max_length, getattr(model.llm.config, "max_position_embeddings", None)) if v]
        self.context_length = min(limits) if limits else None
        self.stop_ids = self.processor.stop_ids

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None) -> "MllmBackend":
        return cls(load_pretrained(path, device=device, dtype=dtype).eval(), source=path)

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        return self.processor.render(messages)

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        enc = self.processor.encode_prompt(messages, images)  # pixel_values (N, T_max, 3, S, S) with images
        return Prompt(enc.text, torch.tensor([enc.input_ids], dtype=torch.long), enc.model_inputs(),
                      enc.num_image_tokens)

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        model = self.model
        ids = prompt.input_ids.to(model.device)  # (1, L)
        extra = {k: v.to(model.device) for k, v in prompt.model_inputs.items()}
        new = model.generate(ids, torch.ones_like(ids), **extra, max_new_tokens=max_new_tokens,
                             eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                             streamer=streamer, **sampling)  # (1, n): only the new tokens
        return new[0].tolist()

    def describe_image(self, image: Any) -> str:
        hw = (image.height, image.width)
        return (f"{image.width}x{image.height}, {self.model.geometry.num_tiles(hw)} tile(s), "
                f"{self.model.num_image_tokens(hw)} tokens")


class TransformersBackend(ChatBackend):
    """An exported checkpoint (or any transformers image-text-to-text / causal LM directory)."""

    kind = "transformers"

    def __init__(self, path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None,
                 trust_remote_code: bool = False):
        import transformers
        from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                                  AutoTokenizer)
        from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING,
                                                            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING)

        self.source = path
        raw = _read_json(os.path.join(path, "config.json"))
        if "auto_map" in raw and not trust_remote_code:
            raise ChatError(f"{path} is a remote-code export: its config.json auto_map "
                            f"({', '.join(sorted(raw['auto_map']))}) points at Python files in that directory, which "
                            f"transformers must execute to build the model. Read them, then rerun with "
                            f"--trust-remote-code")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto_map = getattr(config, "auto_map", None) or {}
        if "AutoModelForImageTextToText" in auto_map or type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
            model_cls, vision = AutoModelForImageTextToText, True
        elif "AutoModelForCausalLM" in auto_map or type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
            model_cls, vision = AutoModelForCausalLM, False
        else:
            raise ChatError(f"{path}: model_type {config.model_type!r} is neither an image-text-to-text model nor a "
                            f"causal LM in transformers {transformers.__version__}")
        major = int(transformers.__version__.split(".")[0])
        if vision:
            # the PIL image backend: what mllm's AnyResImageProcessor reproduces bit for bit (export --verify)
            backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **backend)
            self.tokenizer = self.processor.tokenizer
            self.image_token = getattr(self.processor, "image_token", None)
            if self.image_token is None:
                self.no_images_reason = f"the processor of {path} has no image token"
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.no_images_reason = f"{path} is a text-only language model ({type(config).__name__})"
        self.chat_template = getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template
        if not self.chat_template:
            raise ChatError(f"{path} has no chat template (chat_template.jinja, or chat_template in "
                            f"tokenizer_config.json): prompts cannot be built in the model's format")
        dtype_kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
        self.model = model_cls.from_pretrained(path, trust_remote_code=trust_remote_code, **dtype_kw).to(device).eval()
        text_config = config.get_text_config()
        self.context_length = getattr(text_config, "max_position_embeddings", None)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.stop_ids = stop_token_ids(self.tokenizer, self._end_of_turn(), extra=eos)

    def _end_of_turn(self) -> str:
        """The special token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``),
        or "". An export's generation_config names only EOS, and a ChatML or Llama-3 model ends its turns with
        another token; without it as a stop, answers would run on into an invented next turn."""
        marker = "MLLM_END_OF_TURN_PROBE"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                add_generation_prompt=False)
        except Exception:  # a template that cannot render this probe: EOS alone
            return ""
        tail = text.split(marker, 1)[1] if marker in text else ""
        ids = self.tokenizer.encode(tail, add_special_tokens=False)[:1]
        specials = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        return self.tokenizer.decode(ids) if ids and ids[0] in specials else ""

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        return self._render(messages, add_generation_prompt=True)

    def _render(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool) -> str:
        if self.processor is not None:
            # processors' templates take content as a list of parts
            parts = [dict(m, content=[{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                          else m["content"]) for m in messages]
            return self.processor.apply_chat_template(parts, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        flat = [dict(m, content=_text_of(m["content"])) for m in messages]
        return self.tokenizer.apply_chat_template(flat, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        text = self.render(messages)
        try:
            if self.processor is not None:
                kwargs = {"images": list(images)} if images else {}
                # the template writes BOS where the format wants it: nothing is added
                enc = self.processor(text=text, add_special_tokens=False, return_tensors="pt", **kwargs)
            else:
                enc = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        except ValueError as e:
            raise ChatError(f"the processor of {self.source} rejected the prompt: {e}") from None
        ids = enc["input_ids"]  # (1, L)
        n_image = 0
        if self.image_token is not None:
            n_image = int((ids == self.tokenizer.convert_tokens_to_ids(self.image_token)).sum())
        return Prompt(text, ids, {k: v for k, v in enc.items() if k != "input_ids"}, n_image)

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        model = self.model
        dtype = next(model.parameters()).dtype
        inputs = {k: (v.to(model.device, dtype) if v.is_floating_point() else v.to(model.device))
                  for k, v in prompt.model_inputs.items()}
        out = model.generate(input_ids=prompt.input_ids.to(model.device), **inputs, max_new_tokens=max_new_tokens,
                             eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                             streamer=streamer, **sampling)  # (1, L + n)
        return out[0, prompt.length:].tolist()


def checkpoint_kind(path: str) -> str:
    """``"mllm"`` (our checkpoint) or ``"transformers"`` (an export / a transformers directory)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return "mllm"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "transformers"
    raise ChatError(f"{path}: neither {CONFIG_NAME} (an mllm checkpoint) nor config.json (a transformers "
                    f"checkpoint, e.g. from `mllm export`)")


def resolve_device(device: str) -> str:
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ChatError(f"--device {device}: no CUDA device is available (torch {torch.__version__}, "
                            f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu")
        return device
    raise ChatError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def load_backend(path: str, *, device: str = "cpu", bf16: bool = False,
                 trust_remote_code: bool = False) -> ChatBackend:
    """The right backend for the directory ``path`` (see ``checkpoint_kind``), on ``device``."""
    kind = checkpoint_kind(path)
    device = resolve_device(device)
    dtype = torch.bfloat16 if bf16 else None
    if kind == "mllm":
        return MllmBackend.from_pretrained(path, device=device, dtype=dtype)
    return TransformersBackend(path, device=device, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ChatError(f"{path}: not valid JSON ({e})") from None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content)


# ---- the conversation -------------------------------------------------------------------------------------------
class ChatSession:
    """A multi-turn conversation with one backend (see the module docstring)."""

    def __init__(self, backend: ChatBackend, settings: Optional[GenerationSettings] = None,
                 system: Optional[str] = None):
        self.backend = backend
        self.settings = settings or GenerationSettings()
        self.system = system
        self.turns: List[Dict[str, Any]] = []  # user / assistant messages so far
        self.images: List[Any] = []  # the images of those turns, in order
        self.pending: List[Any] = []  # attached, going with the next user turn
        self.last_prompt: Optional[Prompt] = None

    @property
    def messages(self) -> List[Dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return system + self.turns

    def attach_image(self, source: Any):
        """Load ``source`` (a path, bytes or a PIL image) for the next user turn; returns the image."""
        if not self.backend.accepts_images:
            raise ChatError(f"this model takes no images: {self.backend.no_images_reason}")
        if isinstance(source, (str, os.PathLike)):
            source = os.path.expanduser(str(source))
        try:
            image = load_image(source, max_pixels=self.backend.max_pixels)
        except ImageLoadError as e:
            raise ChatError(f"cannot load image {e}") from None
        self.pending.append(image)
        return image

    def reset(self) -> None:
        self.turns, self.images, self.pending, self.last_prompt = [], [], [], None

    def build_prompt(self, text: str) -> Prompt:
        """The prompt ``ask(text)`` would run; raises ``ChatError`` when it cannot be run."""
        return self._prepare(text)[0]

    def ask(self, text: str, streamer=None) -> str:
        """Send a user turn (with the attached images); returns the answer, kept in the conversation."""
        try:
            prompt, user = self._prepare(text)
        except ChatError as e:
            dropped, self.pending = len(self.pending), []
            raise ChatError(f"{e} (message not sent" + (f"; its {dropped} attached image(s) dropped)" if dropped
                                                         else ")")) from None
        budget = self.settings.max_new_tokens
        if self.backend.context_length:
            budget = min(budget, self.backend.context_length - prompt.length)
        new = self.backend.generate(prompt, budget, streamer=streamer, **self.settings.sampling_kwargs())
        answer = self.backend.decode(new)
        self.turns += [user, {"role": "assistant", "content": answer}]
        self.images += self.pending
        self.pending = []
        self.last_prompt = prompt
        return answer

    def _prepare(self, text: str):
        text = text.strip()
        if not text and not self.pending:
            raise ChatError("empty message")
        token = self.backend.image_token or IMAGE_MARKER
        if token in text:
            raise ChatError(f"the message contains {token!r}, the model's image placeholder; attach images with "
                            f"/image PATH (--image) instead")
        content = [{"type": "image"} for _ in self.pending] + ([{"type": "text", "text": text}] if text else [])
        user = {"role": "user", "content": content}
        prompt = self.backend.encode(self.messages + [user], self.images + self.pending)
        limit = self.backend.context_length
        if limit and prompt.length >= limit:
            hint = "; /reset starts a new conversation" if self.turns else ""
            raise ChatError(f"the prompt is {prompt.length} tokens ({prompt.num_image_tokens} of them image "
                            f"tokens) but the model's context is {limit} tokens, leaving no room for an "
                            f"answer{hint}")
        return prompt, user


# ---- streaming and the interactive loop ---------------------------------------------------------------------------
class StreamPrinter(TextStreamer):
    """A ``TextStreamer`` that writes the answer to ``out`` as it is generated, without its leading
    whitespace (the answer ``ask`` returns is stripped too), and ends it with a newline."""

    def __init__(self, tokenizer: Any, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out
        self.chunks: List[str] = []  # each piece written, in order

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.chunks:
            text = text.lstrip()
        if text:
            self.chunks.append(text)
            self.out.write(text)
        if stream_end:
            self.out.write("\n")
        self.out.flush()


HELP = """commands:
  /image PATH   attach an image to your next message (repeat for several)
  /reset        forget the conversation (turns and images)
  /help         this list
  /exit         quit (so does end of input, Ctrl-D)
any other line is sent as your message."""


def run_interactive(session: ChatSession, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                    stderr: Optional[TextIO] = None, stream: bool = True) -> int:
    """Read lines from ``stdin`` until ``/exit`` or EOF; answers go to ``stdout`` (streamed), everything
    else (prompts, notices, errors) to ``stderr``. No error ends the loop. Returns 0."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    tty = hasattr(stdin, "isatty") and stdin.isatty()

    def note(msg: str) -> None:
        stderr.write(msg + "\n")
        stderr.flush()

    note(f"chatting with {session.backend.source} ({session.backend.kind}); /help lists the commands")
    while True:
        if tty:
            stderr.write("user> ")
            stderr.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if _command(session, line, note):
                break
            continue
        printer = StreamPrinter(session.backend.tokenizer, stdout) if stream else None
        try:
            if tty:
                stderr.write("assistant> ")
                stderr.flush()
            answer = session.ask(line, streamer=printer)
            if printer is None:
                stdout.write(answer + "\n")
                stdout.flush()
        except KeyboardInterrupt:
            _end_line(printer, stdout)
            note("interrupted; that turn was dropped")
        except ChatError as e:
            note(f"error: {e}")
        except Exception as e:  # a failure in one turn (e.g. out of memory) must not end the session
            if os.environ.get("MLLM_DEBUG"):
                raise
            _end_line(printer, stdout)
            note(f"error: {type(e).__name__}: {e}")
    return 0


def _end_line(printer: Optional[StreamPrinter], out: TextIO) -> None:
    if printer is not None and printer.chunks:
        out.write("\n")
        out.flush()


def _command(session: ChatSession, line: str, note) -> bool:
    """Run one /command; True when the loop should end."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/help":
        note(HELP)
    elif name == "/reset":
        session.reset()
        note("conversation cleared")
    elif name == "/image":
        if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
            arg = arg[1:-1]
        if not arg:
            note("error: /image needs a path: /image PATH")
            return False
        try:
            image = session.attach_image(arg)
            note(f"attached {arg} ({session.backend.describe_image(image)}); "
                 f"{len(session.pending)} image(s) go with your next message")
        except ChatError as e:
            note(f"error: {e}")
    else:
        note(f"error: unknown command {name}; /help lists the commands")
    return False
