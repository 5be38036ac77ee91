"""Benchmark: `mllm serve` under load, batching on vs one request at a time, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/serve_load.py [--clients 32 --requests 200 --max-batch-size 16 --threads 1]

A tiny-preset model (random weights, saved to a temp dir) is served twice by `mllm serve` subprocesses on
127.0.0.1: once with request batching (``--max-batch-size``) and once with ``--max-batch-size 1`` (one
request per forward pass: the server without batching). Against each, ``--clients`` concurrent clients
(the official ``openai`` async client) send ``--requests`` chat completions between them, each with one
PNG image (data URL; several sizes, so AnyRes grids differ) and a question, greedy, ``--max-tokens``. It
prints requests/s, p50/p95 latency, failed requests (must be 0), the mean batch size the server ran, and
the speed-up of batching (ratio of requests/s), and checks that both servers gave identical answers.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402

QUESTIONS = ["What is shown?", "What colour is the shape?", "Where is the shape?", "How many shapes are there?",
             "Describe the image.", "Is the shape large or small?"]
SIZES = [(48, 48), (96, 48), (48, 96), (120, 80), (64, 64), (40, 100)]
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (230, 200, 30), (150, 40, 180), (240, 130, 20)]


def image_urls() -> List[str]:
    urls = []
    for i, (w, h) in enumerate(SIZES):
        img = Image.new("RGB", (w, h), (245, 245, 245))
        d = ImageDraw.Draw(img)
        c = COLOURS[i % len(COLOURS)]
        d.ellipse([w // 6, h // 6, w // 6 + min(w, h) // 2, h // 6 + min(w, h) // 2], fill=c)
        d.rectangle([w // 2, h // 2, w - 4, h - 4], fill=COLOURS[(i + 2) % len(COLOURS)])
        buf = io.BytesIO()
        img.save(buf, "PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def make_model(root: str) -> str:
    import torch

    from mllm.model import MultimodalLM
    from mllm.presets import get_preset

    torch.manual_seed(0)
    path = os.path.join(root, "tiny")
    MultimodalLM.build(get_preset("tiny")).eval().save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, args) -> (subprocess.Popen, str):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen([sys.executable, "-m", "mllm.app.cli", "serve", "--model", model, "--port", str(port),
                             "--max-batch-size", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
                             "--max-queue", str(max(256, args.requests)), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mllm serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            proc.kill()
            raise RuntimeError("mllm serve did not come up in 180 s")
        time.sleep(0.2)


async def load(url: str, args, urls: List[str], label: str) -> Dict:
    from openai import AsyncOpenAI

    api = AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600,
                      http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=args.clients)))
    jobs = asyncio.Queue()
    for i in range(args.requests):
        jobs.put_nowait(i)
    latencies, failures, answers = [], [], {}
    bar = tqdm(total=args.requests, desc=label, unit="req", leave=False)

    async def one(i: int):
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": urls[i % len(urls)]}},
                                                 {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]
        t = time.perf_counter()
        try:
            r = await api.chat.completions.create(model="tiny", messages=messages, max_tokens=args.max_tokens,
                                                  temperature=0)
            latencies.append(time.perf_counter() - t)
            answers[i] = (r.choices[0].message.content, r.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(f"{type(e).__name__}: {e}")

    async def client():
        while not jobs.empty():
            await one(jobs.get_nowait())
            bar.update(1)

    for i in range(min(4, args.requests)):  # warm-up (not timed): first-call costs of both sides
        await one(i)
    latencies.clear()
    answers.clear()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - start
    bar.close()
    await api.close()
    lat = sorted(latencies)
    return {"label": label, "wall_s": wall, "rps": len(lat) / wall, "failed": len(failures),
            "failures": failures[:5], "p50_s": statistics.median(lat) if lat else float("nan"),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
            "mean_completion_tokens": statistics.mean(a[1] for a in answers.values()) if answers else 0,
            "answers": answers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()

    urls = image_urls()
    results = []
    with tempfile.TemporaryDirectory(prefix="mllm_serve_load_") as root:
        model = make_model(root)
        for label, max_batch in (("batched", args.max_batch_size), ("one at a time", 1)):
            proc, url = start_server(model, max_batch, args)
            try:
                res = asyncio.run(load(url, args, urls, label))
                sizes = {int(k): v for k, v in httpx.get(url + "/health").json()["batch_sizes"].items()}
                res["mean_batch"] = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
            finally:
                proc.terminate()
                proc.wait(30)
            res["max_batch_size"] = max_batch
            results.append(res)
    batched, single = results
    same = batched["answers"] == single["answers"]
    print(f"\nmllm serve load: tiny preset, {args.requests} requests with images, {args.clients} concurrent clients, "
          f"max_tokens {args.max_tokens}, greedy, {args.threads} torch thread(s) per server")
    try:
        print(f"machine load (1/5/15 min) at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    except OSError:
        pass
    print(f"{'server':<16}{'max batch':>10}{'mean batch':>11}{'req/s':>9}{'p50 s':>9}{'p95 s':>9}{'failed':>8}"
          f"{'tokens/answer':>15}")
    for r in results:
        print(f"{r['label']:<16}{r['max_batch_size']:>10}{r['mean_batch']:>11.1f}{r['rps']:>9.2f}{r['p50_s']:>9.3f}"
              f"{r['p95_s']:>9.3f}{r['failed']:>8}{r['mean_completion_tokens']:>15.1f}")
    speedup = batched["rps"] / single["rps"] if single["rps"] else float("nan")
    print(f"speed-up of batching (req/s ratio): {speedup:.2f}x; identical answers from both servers: {same}")
    for r in results:
        for f in r["failures"]:
            print(f"  {r['label']} failure: {f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "speedup": speedup, "identical_answers": same,
                       "results": [{k: v for k, v in r.items() if k != "answers"} for r in results]}, f, indent=2)
    return 0 if batched["failed"] == 0 and single["failed"] == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
