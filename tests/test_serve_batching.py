"""Batching and concurrency: a batch gives each request its batch-1 tokens, concurrent requests share
forward passes, a full queue is a 503, a disconnect or a timeout cancels the generation; stop strings
and streamed text.

    .venv/bin/python -m pytest -q tests/test_serve_batching.py
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from PIL import Image

from mllm.app.export import export_model
from mllm.app.serve import BackgroundServer, ServedModel, ServeSettings
from mllm.app.serve.answer_text import AnswerText
from mllm.app.serve.batching import GenRequest, generate_batch
from tests._serve import MODEL_ID, client, make_files, user

LONG = 380  # tokens: the prompt below leaves room for this many in the 512-token context


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    return make_files(tmp_path_factory.mktemp("serve_batching"))


@pytest.fixture(scope="module")
def ours(files):
    return ServedModel.load(files["ckpt"])


@pytest.fixture(scope="module")
def theirs(files):
    out = os.path.join(files["root"], "hf_native")
    export_model(files["ckpt"], out, log=None)
    return ServedModel.load(out)


def backend_message(text, *images):
    return {"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}


def gen_requests(model, files, **kw):
    specs = [("What is shown?", ["red"], 12), ("Describe both.", ["blue", "green"], 7), ("Say hi.", [], 16),
             ("What colour is the large shape in this picture, and where is it?", ["green"], 9),
             ("Once more, in a single word?", ["red"], 1)]
    reqs = []
    for text, names, budget in specs:
        images = [Image.open(files[n]).convert("RGB") for n in names]
        reqs.append(GenRequest(model.encode([backend_message(text, *names)], images), budget, **kw))
    return reqs


# ---------------------------------------------------------------- batch == batch 1

@pytest.mark.parametrize("which", ["ours", "theirs"])
def test_a_batch_gives_every_request_its_batch_one_greedy_tokens(which, request, files):
    model = request.getfixturevalue(which)
    reqs = gen_requests(model, files)
    assert len({r.prompt.length for r in reqs}) == len(reqs)  # different lengths: real left padding
    together = generate_batch(model, reqs)
    alone = [generate_batch(model, [r])[0] for r in reqs]
    for a, b, r in zip(together, alone, reqs):
        assert a.token_ids == b.token_ids and a.token_ids
        assert (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
        assert a.completion_tokens <= r.max_new_tokens  # each row kept its own budget
    assert together[-1].completion_tokens == 1 and together[-1].finish_reason == "length"


def test_seeded_sampling_does_not_depend_on_the_batch(ours, files):
    reqs = gen_requests(ours, files, temperature=1.0, top_p=0.9, seed=7)
    together = generate_batch(ours, reqs)
    alone = [generate_batch(ours, [r])[0] for r in reqs]
    assert [a.token_ids for a in together] == [b.token_ids for b in alone]
    greedy = generate_batch(ours, gen_requests(ours, files))
    assert [a.token_ids for a in together] != [g.token_ids for g in greedy]


def test_collate_pads_tiles_to_the_largest_image(ours, files):
    a = ours.encode([backend_message("x", "red")], [Image.open(files["red"]).convert("RGB")]).inputs
    b = ours.encode([backend_message("x", "b", "g")], [Image.open(files[n]).convert("RGB") for n in ("blue", "green")]).inputs
    out = ours.collate([a, {}, b])
    n_a, n_b = a["pixel_values"].shape[0], b["pixel_values"].shape[0]
    tiles = max(a["pixel_values"].shape[1], b["pixel_values"].shape[1])
    assert out["pixel_values"].shape == (n_a + n_b, tiles, *a["pixel_values"].shape[2:])
    assert torch.equal(out["pixel_values"][:n_a, :a["pixel_values"].shape[1]], a["pixel_values"])
    assert torch.equal(out["image_sizes"], torch.cat([a["image_sizes"], b["image_sizes"]]))


# ---------------------------------------------------------------- through the server

def long_request(**kw):
    return {"model": MODEL_ID, "messages": [user("Tell me everything.")], "max_tokens": LONG, "temperature": 0, **kw}


def test_concurrent_requests_share_forward_passes_and_answer_as_alone(files, ours):
    settings = ServeSettings(port=0, max_batch_size=8, batch_wait_ms=300)
    prompts = [("What is shown?", "red"), ("Colour?", "blue"), ("Shape?", "green"), ("Where is it?", "red"),
               ("Size?", "blue"), ("Describe it.", "green")]
    with BackgroundServer(ours, settings) as srv:
        api = client(srv)

        def ask(p):
            return api.chat.completions.create(model=MODEL_ID, messages=[user(p[0], files[p[1]])], max_tokens=8,
                                               temperature=0).choices[0].message.content

        alone = [ask(p) for p in prompts]
        assert set(srv.scheduler.batch_sizes) == {1}
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(ask, prompts))
        assert together == alone
        assert max(srv.scheduler.batch_sizes) >= 3, srv.scheduler.batch_sizes  # they shared forward passes
        assert sum(k * v for k, v in srv.scheduler.batch_sizes.items()) == 2 * len(prompts)


def first_content_line(lines):
    """Read server-sent events from ``lines`` up to the first with content. (Keep ``lines`` referenced while the
    stream should stay open: an abandoned httpx line iterator closes the connection.)"""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                return chunk
    raise AssertionError("no content chunk")


def wait_for(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def test_a_full_queue_answers_503_and_the_queued_request_still_runs(ours):
    with BackgroundServer(ours, ServeSettings(port=0, max_batch_size=1, max_queue=1, batch_wait_ms=0)) as srv:
        api = client(srv)
        results = {}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=long_request(stream=True), timeout=60) as r:
            lines = r.iter_lines()
            first_content_line(lines)  # the long request is generating: the worker is busy
            queued = threading.Thread(target=lambda: results.setdefault("queued", api.chat.completions.create(
                model=MODEL_ID, messages=[user("Hi?")], max_tokens=3, temperature=0)))
            queued.start()
            wait_for(lambda: srv.scheduler.waiting == 1)
            with pytest.raises(openai.APIStatusError) as e:
                api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], max_tokens=3, temperature=0)
            assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
            assert srv.scheduler.finished["cancelled"] == 0 and srv.scheduler.busy  # the long one still runs
            del lines
        # leaving the stream disconnected the long request: it is cancelled and the queued one runs
        queued.join(60)
        assert results["queued"].choices[0].message.content.strip()


def test_client_disconnect_cancels_its_generation(ours):
    with BackgroundServer(ours, ServeSettings(port=0)) as srv:
        done = httpx.post(srv.url + "/v1/chat/completions", json=long_request(), timeout=120).json()
        # the precondition that makes the rest mean something: uncancelled, this request runs LONG tokens
        assert done["usage"]["completion_tokens"] == LONG and done["choices"][0]["finish_reason"] == "length"
        sched = srv.scheduler
        # streaming: read one chunk, hang up
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=long_request(stream=True), timeout=60) as r:
            first_content_line(r.iter_lines())
        wait_for(lambda: sched.finished["cancelled"] == 1)
        assert sched.completed[-1].finish_reason == "cancelled" and sched.completed[-1].completion_tokens < LONG
        # not streaming: the client gives up waiting
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/chat/completions", json=long_request(), timeout=0.3)
        wait_for(lambda: sched.finished["cancelled"] == 2)
        assert sched.completed[-1].completion_tokens < LONG
        assert httpx.get(srv.url + "/health").json()["busy"] is False


def test_a_request_past_its_timeout_is_cancelled_with_504(ours):
    with BackgroundServer(ours, ServeSettings(port=0, request_timeout_s=0.3)) as srv:
        api = client(srv)
        with pytest.raises(openai.APIStatusError) as e:
            api.chat.completions.create(**long_request())
        assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
        with pytest.raises(openai.APIError) as e:  # streaming: the error arrives as an event
            for _ in api.chat.completions.create(**long_request(stream=True)):
                pass
        assert "timeout" in str(e.value)
        wait_for(lambda: srv.scheduler.finished["cancelled"] == 2)
        assert api.chat.completions.create(model=MODEL_ID, messages=[user("Hi?")], max_tokens=2,
                                           temperature=0).choices[0].message.content.strip()


# ---------------------------------------------------------------- answer text

def fake_decode(ids):
    """Token k decodes to VOCAB[k]; 9 and 10 are the two halves of one UTF-8 character."""
    raw = b"".join(VOCAB[i] for i in ids)
    return raw.decode("utf-8", errors="replace")


VOCAB = {0: b" ", 1: b"Hello", 2: b" wor", 3: b"ld", 4: b"!", 5: b" ST", 6: b"OP", 7: b" more", 8: b"\n",
         9: "é".encode()[:1], 10: "é".encode()[1:]}


def run_text(ids, stop=(), incremental=True):
    text = AnswerText(fake_decode, stop, incremental=incremental)
    pieces, stopped = [], False
    for i in ids:
        delta, stopped = text.push(i)
        pieces.append(delta)
        if stopped:
            break
    pieces.append(text.finish())
    return pieces, text.text, stopped


def test_answer_text_streams_exactly_the_stripped_answer():
    pieces, text, _ = run_text([0, 1, 2, 3, 4, 8, 0])
    assert text == "Hello world!" and "".join(pieces) == text
    assert pieces[:2] == ["", "Hello"]  # leading whitespace never sent
    assert pieces[-3:] == ["", "", ""]  # trailing whitespace held, then dropped
    assert run_text([1, 2, 3, 0], incremental=False)[1] == "Hello world"


def test_answer_text_cuts_at_stop_strings_spanning_tokens_and_holds_their_prefixes():
    pieces, text, stopped = run_text([1, 5, 6, 7], stop=["STOP"])
    assert stopped and text == "Hello" and "".join(pieces) == "Hello"
    # " ST" could start "STOP": held back until "ld" shows it does not
    pieces, text, stopped = run_text([1, 5, 3], stop=["STOP"])
    assert not stopped and pieces[1] == "" and "".join(pieces) == text == "Hello STld"


def test_answer_text_never_streams_half_a_character():
    pieces, text, _ = run_text([1, 9, 10])
    assert "\ufffd" not in "".join(pieces[:2]) and "".join(pieces) == text == "Helloé"
