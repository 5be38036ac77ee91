"""The OpenAI Chat Completions wire format: the request schema, error objects, responses and chunks.

    req = parse_request(raw_body)                 # ChatCompletionRequest, or APIError (400) saying what is wrong
    APIError(400, "...", param="messages").body() # {"error": {"message", "type", "param", "code"}}
    completion(...), chunk(...)                   # response objects, as the openai client reads them

Unknown fields are errors (an ignored ``response_format`` or ``tools`` would silently answer something
else than was asked); fields the format has but this server cannot honour with a non-default value
(``n > 1``, penalties, ``logprobs``) are 400s naming the field.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Annotated


class APIError(Exception):
    """An error answered as OpenAI does: ``status`` and ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[Part]]
    name: Optional[str] = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: List[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(1, ge=1)
    user: Optional[str] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logprobs: Optional[bool] = None

    def stop_list(self) -> List[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"'stop' takes at most 4 sequences, got {len(stops)}", param="stop")
        return [s for s in stops if s]

    def check_supported(self) -> None:
        if (self.n or 1) > 1:
            raise APIError(400, f"n={self.n}: this server returns one choice per request (n must be 1); send "
                                f"n requests (with different seeds when sampling) instead", param="n",
                           code="unsupported_value")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported (only 0)", param=name, code="unsupported_value")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs", code="unsupported_value")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options needs stream: true", param="stream_options")


def parse_request(raw: bytes) -> ChatCompletionRequest:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(payload).__name__}",
                       code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as e:
        raise validation_error(e) from None


_BRANCH_NAMES = {"str", "int", "float", "bool", "list", "TextPart", "ImagePart"}


def validation_error(e: ValidationError) -> APIError:
    """A pydantic error -> a 400 naming the first offending field (``messages.0.content.1.image_url``)."""
    # a union (content: str | [parts]) reports one error per branch: the deepest one says the most
    err = max(e.errors(), key=lambda x: len(x["loc"]))
    # pydantic names union branches in the location ("list[tagged-union[TextPart,ImagePart]]"): not a field
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _BRANCH_NAMES))]
    param = ".".join(loc) or None
    if err["type"] == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if err["type"] == "missing":
        return APIError(400, f"missing required parameter: {param}", param=param, code="missing_required_parameter")
    value = err.get("input")
    shown = json.dumps(value)[:80] if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return APIError(400, f"invalid value for {param} ({shown}): {err['msg']}", param=param, code="invalid_value")


# ---- responses ------------------------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, created: int, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int) -> Dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(cid: str, model: str, created: int, delta: Dict[str, Any], finish_reason: Optional[str] = None,
          usage_: Optional[Dict[str, int]] = None, with_choice: bool = True) -> Dict[str, Any]:
    out: Dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish_reason}] if with_choice else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def sse(data: Union[Dict[str, Any], str]) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def model_card(model_id: str, created: Optional[int] = None) -> Dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created or int(time.time()), "owned_by": "mllm"}
