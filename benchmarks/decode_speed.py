"""Benchmark: greedy decoding speed of an mllm model vs its export run by plain transformers.

Run from the repository root::

    .venv/bin/python benchmarks/decode_speed.py [--preset tiny --new-tokens 64 --repeats 7 --threads 2]

A random-weight model of the preset (``tiny`` by default: 64px tiles, 6-layer 192-wide Llama, AnyRes) is
exported natively (LlavaNext) into a temporary directory and loaded back with transformers'
``AutoModelForImageTextToText``. Both decode the same image and prompt (our chat template, each side with its
own processor) greedily for ``--new-tokens`` tokens (``min_new_tokens`` too, so neither stops early), in the
same process: one warm-up each, then ``--repeats`` timed rounds in which the two alternate (who goes first
alternates too). It prints tokens/s (median) of each, the ratio ours / theirs (goal >= 1.0x) and whether
the generated tokens are identical.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from data_pipelines.processor import MultimodalProcessor
    from mllm import MultimodalLM, get_preset
    from mllm.app.export import export_model
    from mllm.app.export.verify import default_image, default_messages
    from mllm.presets import offline

    torch.manual_seed(args.seed)
    model = MultimodalLM.build(offline(get_preset(args.preset))).float().eval()
    n_params = sum(p.numel() for p in model.parameters())
    image = default_image(model.geometry.tile_size)
    ours_proc = MultimodalProcessor.for_model(model, num_threads=1)
    prompt = ours_proc.render(default_messages())

    with tempfile.TemporaryDirectory(prefix="mllm_decode_bench_") as out:
        report = export_model(model, out, log=None)
        backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
        processor = AutoProcessor.from_pretrained(out, **backend)
        theirs = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()

    # ours: the processor chat and eval use
    enc = ours_proc.encode_prompt(default_messages(), [image])
    input_ids = torch.tensor([enc.input_ids])
    ours_inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **enc.model_inputs())
    their_inputs = processor(images=[image], text=prompt, add_special_tokens=False, return_tensors="pt")
    n = args.new_tokens
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def run_ours():
        return model.generate(**ours_inputs, **gen)[0]

    def run_theirs():
        return theirs.generate(**their_inputs, **gen)[0, their_inputs["input_ids"].shape[1]:]

    with torch.inference_mode():
        a, b = run_ours(), run_theirs()  # warm-up (and the equality check)
        times = {"ours": [], "theirs": []}
        for r in range(args.repeats):
            order = [("ours", run_ours), ("theirs", run_theirs)]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    tps = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"model: preset {args.preset!r}, {n_params / 1e6:.1f}M params, exported as {report.path} "
          f"(transformers {transformers.__version__}), torch threads {torch.get_num_threads()}")
    print(f"prompt: {input_ids.shape[1]} tokens ({enc.num_image_tokens} image tokens, image {image.height}x{image.width}); "
          f"{n} new tokens, {args.repeats} alternating rounds after one warm-up")
    print(f"ours:   {tps['ours']:8.1f} tokens/s  (median of {[round(t, 3) for t in times['ours']]} s)")
    print(f"theirs: {tps['theirs']:8.1f} tokens/s  (median of {[round(t, 3) for t in times['theirs']]} s)")
    print(f"ratio ours/theirs: {tps['ours'] / tps['theirs']:.2f}x (goal >= 1.0x); "
          f"generated tokens identical: {'yes' if torch.equal(a, b) else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
