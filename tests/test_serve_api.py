"""``mllm serve`` through the official ``openai`` client: answers equal ``mllm chat``'s, streaming equals
non-streaming, stops / budgets / sampling / usage, images from files and URLs, the API key, the command.

    .venv/bin/python -m pytest -q tests/test_serve_api.py

Servers run in-process (uvicorn on a thread, a free port on 127.0.0.1); one test starts `mllm serve` as a
subprocess.
"""
from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from mllm.app.chat import ChatSession, GenerationSettings, load_backend
from mllm.app.cli import main
from mllm.app.export import export_model
from mllm.app.serve import BackgroundServer, ServedModel, ServeSettings
from tests._serve import MODEL_ID, client, data_url, make_files, user

MAX_NEW = 10


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    return make_files(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def native_export(files):
    out = os.path.join(files["root"], "hf_native")
    assert export_model(files["ckpt"], out, log=None).path == "llava_next"
    return out


@pytest.fixture(scope="module")
def server(files):
    with BackgroundServer(ServedModel.load(files["ckpt"]), ServeSettings(port=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server):
    return client(server)


def chat_cli(capsys, model_dir, images, prompt, *extra):
    image_args = ["--image", *images] if images else []
    code = main(["chat", "--model", model_dir, *image_args, "--prompt", prompt, "--max-new-tokens", str(MAX_NEW),
                 *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out[:-1]  # the answer, without print's newline


def ask(api, messages, model=MODEL_ID, **kw):
    kw.setdefault("max_tokens", MAX_NEW)
    kw.setdefault("temperature", 0)
    return api.chat.completions.create(model=model, messages=messages, **kw)


def streamed(api, messages, model=MODEL_ID, **kw):
    kw.setdefault("max_tokens", MAX_NEW)
    kw.setdefault("temperature", 0)
    pieces, finish, usage = [], None, None
    for chunk in api.chat.completions.create(model=model, messages=messages, stream=True,
                                             stream_options={"include_usage": True}, **kw):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    return pieces, finish, usage


# ---------------------------------------------------------------- equal to `mllm chat`

@pytest.mark.parametrize("images", [["red"], ["red", "blue"], []])
def test_one_shot_greedy_answer_equals_mllm_chat(files, api, capsys, images):
    paths = [files[n] for n in images]
    expected = chat_cli(capsys, files["ckpt"], paths, "What is shown?")
    assert expected.strip()  # the model says something
    r = ask(api, [user("What is shown?", *paths)])
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.role == "assistant" and r.model == MODEL_ID and r.object == "chat.completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    backend = load_backend(files["ckpt"])
    session = ChatSession(backend, GenerationSettings(MAX_NEW))
    for p in paths:
        session.attach_image(p)
    prompt_len = session.build_prompt("What is shown?").length
    assert r.usage.prompt_tokens == prompt_len and 0 < r.usage.completion_tokens <= MAX_NEW
    assert r.usage.total_tokens == prompt_len + r.usage.completion_tokens


def test_answers_depend_on_the_image(api, files):
    answers = {ask(api, [user("Colour?", files[n])]).choices[0].message.content for n in ("red", "blue", "green")}
    assert len(answers) == 3


def test_native_export_one_shot_equals_mllm_chat_on_it(files, native_export, capsys):
    with BackgroundServer(ServedModel.load(native_export), ServeSettings(port=0)) as srv:
        api = client(srv)
        assert [m.id for m in api.models.list().data] == ["hf_native"]
        answers = {}
        for names in (["red"], ["blue", "green"]):
            paths = [files[n] for n in names]
            expected = chat_cli(capsys, native_export, paths, "What is shown?")
            got = ask(api, [user("What is shown?", *paths)], model="hf_native").choices[0].message.content
            assert got == expected and got.strip()
            # and the export says what the source checkpoint says (export --verify's promise, seen here too)
            assert got == chat_cli(capsys, files["ckpt"], paths, "What is shown?")
            answers[names[0]] = got
        pieces, _, _ = streamed(api, [user("What is shown?", files["red"])], model="hf_native")
        assert "".join(pieces) == answers["red"]


def test_remote_code_export_serves_only_with_trust_remote_code(files, capsys):
    # transformers caches remote code under the directory's base name: one fixed name keeps that cache small
    out = os.path.join(files["root"], "mllm_test_serve_remote")
    assert export_model(files["ckpt"], out, path="remote", log=None).path == "remote"
    with pytest.raises(ValueError, match="--trust-remote-code"):
        ServedModel.load(out)
    with BackgroundServer(ServedModel.load(out, trust_remote_code=True), ServeSettings(port=0)) as srv:
        got = ask(client(srv), [user("What is shown?", files["red"])], model="mllm_test_serve_remote")
    assert got.choices[0].message.content == chat_cli(capsys, files["ckpt"], [files["red"]], "What is shown?")


def test_system_prompt_and_multi_turn_match_a_chat_session(api, files):
    session = ChatSession(load_backend(files["ckpt"]), GenerationSettings(MAX_NEW), system="Answer briefly.")
    session.attach_image(files["blue"])
    first = session.ask("What is shown?")
    session.attach_image(files["red"])
    second = session.ask("And now?")
    messages = [{"role": "system", "content": "Answer briefly."}, user("What is shown?", files["blue"])]
    r1 = ask(api, messages).choices[0].message.content
    assert r1 == first
    messages += [{"role": "assistant", "content": r1}, user("And now?", files["red"])]
    assert ask(api, messages).choices[0].message.content == second
    # a "developer" message is the system prompt under its newer name
    dev = [{"role": "developer", "content": "Answer briefly."}, user("What is shown?", files["blue"])]
    assert ask(api, dev).choices[0].message.content == first


# ---------------------------------------------------------------- streaming, stops, budgets, sampling

def test_streaming_yields_the_same_text_as_non_streaming(api, files):
    for messages in ([user("What is shown?", files["red"])], [user("Describe it.", files["blue"], files["green"])],
                     [user("Say hi.")]):
        whole = ask(api, messages, max_tokens=24)
        pieces, finish, usage = streamed(api, messages, max_tokens=24)
        assert len(pieces) > 1  # streamed as it was generated, not sent in one piece at the end
        assert "".join(pieces) == whole.choices[0].message.content
        assert finish == whole.choices[0].finish_reason
        assert usage.prompt_tokens == whole.usage.prompt_tokens
        assert usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_cut_the_answer_in_both_modes(api, files):
    messages = [user("What is shown?", files["red"])]
    full = ask(api, messages, max_tokens=40).choices[0].message.content
    assert len(full) > 12
    stop = full[6:9]  # three characters from inside the answer
    cut = full[:full.index(stop)].strip()
    r = ask(api, messages, max_tokens=40, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < ask(api, messages, max_tokens=40).usage.completion_tokens
    pieces, finish, _ = streamed(api, messages, max_tokens=40, stop=stop)
    assert "".join(pieces) == cut and finish == "stop"  # nothing of the stop string leaked into the stream


def test_max_tokens_and_max_completion_tokens_bound_the_answer(api, files):
    messages = [user("What is shown?", files["red"])]
    r = ask(api, messages, max_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    long = ask(api, messages, max_tokens=12)
    r2 = api.chat.completions.create(model=MODEL_ID, messages=messages, max_completion_tokens=3, temperature=0)
    assert r2.choices[0].message.content == r.choices[0].message.content
    assert long.choices[0].message.content.startswith(r.choices[0].message.content)


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(api, files):
    messages = [user("What is shown?", files["red"])]
    kw = dict(temperature=1.0, top_p=0.95, max_tokens=12)
    a = [ask(api, messages, seed=s, **kw).choices[0].message.content for s in (1, 1, 2, 3)]
    assert a[0] == a[1]
    assert len(set(a[1:])) > 1  # other seeds, other answers
    greedy = ask(api, messages, max_tokens=12).choices[0].message.content
    assert any(x != greedy for x in a)
    # a tiny top_p keeps only the most likely token: sampling becomes greedy
    assert ask(api, messages, temperature=1.0, top_p=1e-6, seed=5, max_tokens=12).choices[0].message.content == greedy


def test_models_and_health(server, api):
    assert [(m.id, m.object, m.owned_by) for m in api.models.list().data] == [(MODEL_ID, "model", "mllm")]
    assert api.models.retrieve(MODEL_ID).id == MODEL_ID
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_ID


# ---------------------------------------------------------------- images from files and URLs, the key

def test_local_images_only_under_the_allowed_directory(files, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    inside = allowed / "red.png"
    inside.write_bytes(open(files["red"], "rb").read())
    (allowed / "escape.png").symlink_to(files["blue"])  # a link pointing outside the directory
    model = ServedModel.load(files["ckpt"])
    expected = None
    with BackgroundServer(model, ServeSettings(port=0)) as srv:
        api = client(srv)
        expected = ask(api, [user("What is shown?", files["red"])]).choices[0].message.content
        with pytest.raises(openai.BadRequestError) as e:  # not allowed at all by default
            ask(api, [file_message(inside)])
        assert e.value.body["code"] == "local_images_disabled"
    with BackgroundServer(model, ServeSettings(port=0, allow_local_images=str(allowed))) as srv:
        api = client(srv)
        assert ask(api, [file_message(inside)]).choices[0].message.content == expected
        for path in (allowed / "escape.png", allowed / ".." / "red.png", files["blue"]):
            with pytest.raises(openai.BadRequestError) as e:
                ask(api, [file_message(path)])
            assert e.value.body["code"] == "local_image_forbidden", path


def file_message(path):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{path}"}},
                                        {"type": "text", "text": "What is shown?"}]}


def test_remote_images_refused_by_default_and_fetched_when_enabled(files):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=files["root"])
    handler.log_message = lambda *a: None
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/red.png"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                           {"type": "text", "text": "What is shown?"}]}
    model = ServedModel.load(files["ckpt"])
    try:
        with BackgroundServer(model, ServeSettings(port=0)) as srv:
            api = client(srv)
            expected = ask(api, [user("What is shown?", files["red"])]).choices[0].message.content
            with pytest.raises(openai.BadRequestError) as e:
                ask(api, [message])
            assert e.value.body["code"] == "remote_images_disabled"
        with BackgroundServer(model, ServeSettings(port=0, allow_remote_images=True)) as srv:
            api = client(srv)
            assert ask(api, [message]).choices[0].message.content == expected
            missing = dict(message, content=[{"type": "image_url", "image_url": {"url": url + ".gone"}}])
            with pytest.raises(openai.BadRequestError) as e:
                ask(api, [missing])
            assert e.value.body["code"] == "image_fetch_failed"
    finally:
        web.shutdown()


def test_api_key_on_every_route_but_health(files):
    with BackgroundServer(ServedModel.load(files["ckpt"]), ServeSettings(port=0, api_key="s3cret")) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for method, path in (("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL_ID}"),
                                 ("POST", "/v1/chat/completions")):
                r = httpx.request(method, srv.url + path, headers=headers, json={})
                assert r.status_code == 401, (method, path)
                assert r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            ask(client(srv, api_key="wrong"), [user("Hi?")])
        assert ask(client(srv, api_key="s3cret"), [user("Hi?")]).choices[0].message.content.strip()


@pytest.mark.gpu
def test_cuda_bf16_server_answers_like_mllm_chat(files, native_export, capsys):
    for path, name in ((files["ckpt"], MODEL_ID), (native_export, "hf_native")):
        expected = chat_cli(capsys, path, [files["red"]], "What is shown?", "--device", "cuda", "--bf16")
        with BackgroundServer(ServedModel.load(path, device="cuda", bf16=True), ServeSettings(port=0)) as srv:
            api = client(srv)
            assert ask(api, [user("What is shown?", files["red"])], model=name).choices[0].message.content == expected
            pieces, _, _ = streamed(api, [user("What is shown?", files["red"])], model=name)
            assert "".join(pieces) == expected


# ---------------------------------------------------------------- the command

def test_mllm_serve_command_answers_like_mllm_chat(files, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mllm.app.cli", "serve", "--model", files["ckpt"], "--port", str(port),
                             "--served-model-name", "tiny", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "mllm serve did not come up"
            time.sleep(0.2)
        api = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        got = ask(api, [user("What is shown?", files["red"])], model="tiny").choices[0].message.content
        assert got == chat_cli(capsys, files["ckpt"], [files["red"]], "What is shown?")
    finally:
        proc.terminate()
        proc.wait(30)
