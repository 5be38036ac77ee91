"""The ladder that chose the image head's conditioning and training target: each variant is the demo's own
generation step (``mllm.app.demo_gen.run_gen_step``: the gen stage, sampling the held-out prompts, the checker and
FD) with one lever changed, run in its own process on one torch thread.

    python benchmarks/gen_conditioning.py --init-from demo_out/instruct --data /tmp/gen_data --out /tmp/ladder
    python benchmarks/gen_conditioning.py --init-from /tmp/random_tiny --data /tmp/gen_data --out /tmp/ladder \\
        --variants legacy,prompt_embed --jobs 2 --set epochs=2

``--init-from`` is any instruct-stage output; a random-init ``tiny`` model (``MultimodalLM.build(get_preset
("tiny")).save_pretrained(dir)``) is the worst case of an LLM that knows no language. ``--data`` holds
gen_train.json / gen_test.json (made there when absent). Results: one ``DIR/<variant>/generation_metrics.json``
per variant and a markdown table (everything the prompt says, colour, kind, position, count, colour+kind,
FD, seconds) printed and appended to ``DIR/ladder.md``. Wall seconds depend on the machine's load; the step's
CPU seconds (one thread) are what its wall time is on a quiet machine, so variants run side by side still
compare in cost.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

LEGACY = {"condition": "queries", "num_queries": 16, "llm_layers": [-1], "refiner_layers": 0,
          "prediction": "velocity"}
# name -> (gen_head fields over the defaults, GenPlan fields); each row changes one lever from the one above
VARIANTS: Dict[str, Any] = {
    "legacy": (LEGACY, {}),                                                   # K queries, last layer, v-pred
    "queries_l0": ({**LEGACY, "llm_layers": [0, -1]}, {}),                    # + input embeddings alongside
    "prompt_last": ({**LEGACY, "condition": "prompt"}, {}),                   # the prompt tokens' own states
    "prompt_embed": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1]}, {}),
    "prompt_mid": ({**LEGACY, "condition": "prompt", "llm_layers": [0, 3, -1]}, {}),   # + a middle layer
    "prompt_queries": ({**LEGACY, "condition": "prompt+queries", "num_queries": 4, "llm_layers": [0, -1]}, {}),
    "prompt_embed_x0": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "prediction": "x0"}, {}),
    "refine2": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "refiner_layers": 2}, {}),
    "refine2_x0": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "refiner_layers": 2,
                    "prediction": "x0"}, {}),
    "refine2_x0_uniform": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "refiner_layers": 2,
                            "prediction": "x0", "t_sampling": "uniform"}, {}),
    "default": ({}, {}),                                                      # GenHeadConfig's defaults
    # the demo's training budget and sampling, one lever at a time on the default head (--set epochs=... etc.)
    "cfg1.5": ({}, {"cfg_scale": 1.5}),
    "fp32": ({}, {"cfg_scale": 1.5, "bf16": False}),
    "fp32_ema": ({}, {"cfg_scale": 1.5, "bf16": False, "ema_decay": 0.995}),
    "fp32_refine4": ({"refiner_layers": 4}, {"cfg_scale": 1.5, "bf16": False}),
    "fp32_nopool": ({"pooled": "none"}, {"cfg_scale": 1.5, "bf16": False}),
    "fp32_shift2": ({"t_shift": 2.0}, {"cfg_scale": 1.5, "bf16": False}),       # more steps near noise
    "shift3": ({"t_shift": 3.0}, {}),                                          # over today's defaults
}
COLUMNS = ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy", "shape_accuracy",
           "position_accuracy", "count_accuracy", "fd", "fd_real_vs_real")


def run_variant(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    head, plan = VARIANTS[name]
    out = os.path.join(args.out, name)
    gen_head = {"dit": {"preset": "tiny"}, **head}
    cmd = [sys.executable, "-m", "mllm.app.demo_gen", "--out", out, "--init-from", args.init_from, "--data", args.data,
           "--set", f"gen_head={json.dumps(gen_head)}"]
    for key, value in plan.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    for item in args.sets:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLLM_THREADS="1")
    t = time.time()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "log.txt"), "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return {"variant": name, "error": f"exit code {rc} (see {out}/log.txt)"}
    with open(os.path.join(out, "generation_metrics.json")) as f:
        m = json.load(f)
    return {"variant": name, **{k: m.get(k) for k in COLUMNS}, "steps": m["train"]["steps"],
            "train_s": m["seconds"]["train"], "total_s": m["seconds"]["total"], "cpu_s": m["seconds"]["cpu_total"],
            "load_avg": m["seconds"]["load_avg"], "wall_s": round(time.time() - t, 1)}


def table(rows: List[Dict[str, Any]], note: str) -> str:
    head = ["variant", "everything", "colour+kind", "colour", "kind", "position", "count", "FD", "FD real",
            "steps", "train s", "step s", "step CPU s"]
    lines = [f"\n{note}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} |")
            continue
        vals = [f"{r[k]:.3f}" for k in COLUMNS[:6]] + [f"{r['fd']:.3g}", f"{r['fd_real_vs_real']:.3g}"]
        lines.append(f"| {r['variant']} | " + " | ".join(vals) + f" | {r['steps']} | {r['train_s']:.0f} | "
                     f"{r['total_s']:.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init-from", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--jobs", type=int, default=1, help="variants run side by side (each on one thread)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="a GenPlan field for every variant")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    os.makedirs(args.out, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda n: run_variant(n, args), names))
    load = os.getloadavg()
    note = (f"init_from={args.init_from} sets={args.sets} jobs={args.jobs} load avg at end "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    text = table(rows, note)
    print(text)
    with open(os.path.join(args.out, "ladder.md"), "a") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "ladder.jsonl"), "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "note": note}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
