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
          "prediction": "velocity", "t_shift": 1.0}
# the plan the conditioning rows were measured with: 750 steps, guidance 3, bf16 autocast when sampling
PLAN_750 = {"epochs": 3.0, "cfg_scale": 3.0, "bf16": True}
# name -> (gen_head fields over the defaults, GenPlan fields); each row changes one lever from the one above.
# Measured on a random-init tiny LLM, 200 held-out prompts; everything / colour+kind / colour / kind / position /
# count / FD / floor / CPU s of the step (README "Measured results" has the conditioning rows)
VARIANTS: Dict[str, Any] = {
    "legacy": (LEGACY, PLAN_750),                                             # K queries, last layer, v-pred
    "queries_l0": ({**LEGACY, "llm_layers": [0, -1]}, PLAN_750),              # + input embeddings alongside
    "prompt_last": ({**LEGACY, "condition": "prompt"}, PLAN_750),             # the prompt tokens' own states
    "prompt_embed": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1]}, PLAN_750),
    "prompt_mid": ({**LEGACY, "condition": "prompt", "llm_layers": [0, 3, -1]}, PLAN_750),   # + a middle layer
    "prompt_queries": ({**LEGACY, "condition": "prompt+queries", "num_queries": 4, "llm_layers": [0, -1]},
                       PLAN_750),
    "prompt_embed_x0": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "prediction": "x0"}, PLAN_750),
    "refine2": ({**LEGACY, "condition": "prompt", "llm_layers": [0, -1], "refiner_layers": 2}, PLAN_750),
    "refine2_x0": ({"t_shift": 1.0}, PLAN_750),          # 0.015 / 0.235 / 0.627 / 0.365 / 0.930 / 0.835 / 23x / 179
    "refine2_x0_uniform": ({"t_shift": 1.0, "t_sampling": "uniform"}, PLAN_750),
    # the training budget, then sampling (benchmarks/gen_sampling_sweep.py on this row's head: guidance 1.5
    # 0.195 / 0.472, 1.25 0.210 / 0.510, 1 0.185 / 0.480; 25 Euler steps at guidance 3 0.130 / 0.430)
    # 0.150 / 0.438 / 0.873 / 0.517 / 0.998 / 0.985 / 6.8x / 219
    "steps1500": ({"t_shift": 1.0}, {**PLAN_750, "epochs": 6.0}),
    # guidance 1.5, float32 sampling: 0.375 / 0.655 / 0.820 / 0.823 / 1.000 / 1.000 / 2.5x / 325
    "steps2000": ({"t_shift": 1.0}, {"epochs": 8.0}),
    # 0.055 / 0.393 / 0.752 / 0.588 / 0.995 / 0.990 / 3.8x / 276
    "refine4": ({"t_shift": 1.0, "refiner_layers": 4}, {"epochs": 8.0}),
    # 0.000 / 0.287 / 0.645 / 0.532 / 0.863 / 0.150 / 22x / 291
    "nopool": ({"t_shift": 1.0, "pooled": "none"}, {"epochs": 8.0}),
    # (seed 1: 0.330 / 0.600 / 0.800 / 0.757 / 1.000 / 0.995 / 3.1x / 267)
    "shift2_steps2000": ({}, {"epochs": 8.0}),  # SD3 shift 2: 0.960 / 0.980 / 0.998 / 0.983 / 1 / 1 / 0.84x / 303
    # shift 2, 1500 steps at lr 2e-3: 0.810 / 0.902 / 1.000 / 0.902 / 1.000 / 1.000 / 1.9x / 216 at seed 0,
    # but 0.165 / 0.453 / 0.800 / 0.565 / 0.990 / 0.980 / 4.1x / 218 at --set seed=1 (its loss spikes as warmup ends)
    "lr2e-3": ({}, {"lr": 2e-3}),
    # seed 1 with warmup 0.15 instead of 0.05: 0.900 / 0.950 / 0.998 / 0.953 / 1.000 / 1.000 / 1.25x / 219
    "lr2e-3_warmup15": ({}, {"lr": 2e-3, "warmup_ratio": 0.15}),
    # the default, lr 1e-3: seed 0 0.660 / 0.825 / 0.993 / 0.828 / 0.995 / 0.980 / 2.5x / 213;
    # seed 1 0.920 / 0.960 / 1.000 / 0.960 / 1.000 / 1.000 / 2.0x / 220; seed 2 0.315 / 0.595 / 0.995 / 0.627 /
    # 1.000 / 0.995 / 3.5x / 216: better on average over seeds than 2e-3, still seed-dependent
    "default": ({}, {}),
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
