"""Bad input never takes the server down: every case gets an OpenAI error object with its 4xx status, and
the server answers a good request right after.

    .venv/bin/python -m pytest -q tests/test_serve_errors.py
"""
from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from mllm.app.serve import BackgroundServer, ServedModel, ServeSettings
from tests._serve import MODEL_ID, client, data_url, make_files, user

LIMITS = dict(max_image_bytes=256 << 10, max_request_bytes=2 << 20, max_images=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    return make_files(tmp_path_factory.mktemp("serve_errors"))


@pytest.fixture(scope="module")
def server(files):
    with BackgroundServer(ServedModel.load(files["ckpt"]), ServeSettings(port=0, **LIMITS)) as srv:
        yield srv


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 6000) -> bytes:
    """A real decompression bomb: a valid RGB PNG of side x side black pixels (108 MB decoded) in ~100 KB."""
    row = b"\x00" + b"\x00" * (3 * side)  # filter byte + pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def image_message(url: str, text: str = "What is shown?"):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def body(messages, **kw):
    return {"model": MODEL_ID, "messages": messages, "max_tokens": 4, "temperature": 0, **kw}


def cases(files):
    """name -> (raw request body (bytes) or JSON (dict), expected status, expected error code)."""
    red = files["red"]
    png = open(red, "rb").read()
    bad_png = png[:40] + b"\x00" * 30  # a PNG header with corrupt data after it
    return {
        "malformed JSON": (b'{"model": "ckpt", "messages": [', 400, "invalid_json"),
        "not a JSON object": (b"[1, 2]", 400, "invalid_json"),
        "not UTF-8": (b"\xff\xfe\x00{", 400, "invalid_json"),
        "unknown field": (body([user("Hi?")], frobnicate=1), 400, "unknown_parameter"),
        "unknown field in a part": (body([{"role": "user", "content": [{"type": "text", "text": "x", "y": 1}]}]),
                                    400, "unknown_parameter"),
        "unknown part type": (body([{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]), 400,
                              "invalid_value"),
        "unknown role": (body([{"role": "tool", "content": "x"}]), 400, "invalid_value"),
        "missing messages": ({"model": MODEL_ID}, 400, "missing_required_parameter"),
        "empty messages": (body([]), 400, "invalid_value"),
        "wrong model": (dict(body([user("Hi?")]), model="gpt-4o"), 404, "model_not_found"),
        "n > 1": (body([user("Hi?")], n=2), 400, "unsupported_value"),
        "temperature out of range": (body([user("Hi?")], temperature=5), 400, "invalid_value"),
        "max_tokens 0": (body([user("Hi?")], max_tokens=0), 400, "invalid_value"),
        "logprobs": (body([user("Hi?")], logprobs=True), 400, "unsupported_value"),
        "five stop strings": (body([user("Hi?")], stop=list("abcde")), 400, None),
        "not an image": (body([image_message(data_url(b"this is not a png at all"))]), 400, "invalid_image"),
        "corrupt PNG": (body([image_message(data_url(bad_png))]), 400, "invalid_image"),
        "decompression bomb": (body([image_message(data_url(bomb_png()))]), 400, "invalid_image"),
        "data URL over the size limit": (body([image_message(data_url(noise_png(400)))]), 400, "image_too_large"),
        "GIF data URL": (body([image_message(data_url(png, "image/gif"))]), 400, "invalid_image"),
        "not base64": (body([image_message("data:image/png;base64,@@@@")]), 400, "invalid_image_url"),
        "not a data URL": (body([image_message("data:image/png," + "x" * 10)]), 400, "invalid_image_url"),
        "ftp URL": (body([image_message("ftp://example.com/x.png")]), 400, "invalid_image_url"),
        "remote URL refused": (body([image_message("http://127.0.0.1:9/x.png")]), 400, "remote_images_disabled"),
        "file URL refused": (body([image_message(f"file://{red}")]), 400, "local_images_disabled"),
        "more images than allowed": (body([user("Three?", red, red, red)]), 400, "too_many_images"),
        "image in an assistant turn": (body([image_message(data_url(png)) | {"role": "assistant"}, user("Hi?")]),
                                       400, "invalid_value"),
        "image placeholder typed in": (body([user("<image>\nWhat is it?")]), 400, "invalid_value"),
        "last turn not a user turn": (body([user("Hi?"), {"role": "assistant", "content": "Hello"}]), 400,
                                      "invalid_value"),
        "prompt longer than the context": (body([user("red circle " * 400, red)]), 400, "context_length_exceeded"),
        "answer budget past the context": (body([user("Hi?")], max_tokens=600), 400, "context_length_exceeded"),
        "request body too large": (b'{"model": "' + b"x" * (3 << 20) + b'"}', 413, "request_too_large"),
    }


CASES = ["malformed JSON", "not a JSON object", "not UTF-8", "unknown field", "unknown field in a part",
         "unknown part type", "unknown role", "missing messages", "empty messages", "wrong model", "n > 1",
         "temperature out of range", "max_tokens 0", "logprobs", "five stop strings", "not an image", "corrupt PNG",
         "decompression bomb", "data URL over the size limit", "GIF data URL", "not base64", "not a data URL",
         "ftp URL", "remote URL refused", "file URL refused", "more images than allowed",
         "image in an assistant turn", "image placeholder typed in", "last turn not a user turn",
         "prompt longer than the context", "answer budget past the context", "request body too large"]


@pytest.fixture(scope="module")
def all_cases(files):
    built = cases(files)
    assert sorted(built) == sorted(CASES)
    return built


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_its_4xx_and_the_server_keeps_answering(server, files, all_cases, case):
    payload, status, code = all_cases[case]
    kw = {"content": payload, "headers": {"content-type": "application/json"}} if isinstance(payload, bytes) \
        else {"json": payload}
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    if code is not None:
        assert err["code"] == code, err
    # still serving
    ok = client(server).chat.completions.create(model=MODEL_ID, messages=[user("Hi?", files["red"])], max_tokens=3,
                                                temperature=0)
    assert ok.choices[0].message.content.strip()


def test_errors_name_the_offending_field(server, files):
    api = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], extra_body={"frobnicate": 1})
    assert e.value.body["param"] == "frobnicate" and "frobnicate" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?"), image_message("data:image/png;base64,AAAA")])
    assert e.value.body["param"] == "messages.1.content.0.image_url"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], n=3)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=MODEL_ID, messages=[user("red circle " * 400)])
    assert "maximum context length is 512 tokens" in e.value.body["message"]


def test_unknown_routes_and_methods_are_openai_errors(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(server.url + "/").status_code == 404  # no page unless `mllm web`


def test_a_failing_generation_is_a_500_and_the_worker_goes_on(server, files, monkeypatch):
    model = server.app.state.model
    real = model.generate
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", fail_once)
    api = client(server)
    with pytest.raises(openai.InternalServerError) as e:
        api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], max_tokens=3, temperature=0)
    assert "simulated out of memory" in e.value.body["message"] and e.value.body["type"] == "server_error"
    assert api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], max_tokens=3,
                                       temperature=0).choices[0].message.content.strip()
