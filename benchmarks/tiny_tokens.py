"""Where the tiny default's training tokens go: tokens per sample of each demo data file, the share that are
image tokens and answer (target) tokens, under ``vicuna_v1`` (LLaVA's system sentence) and
``vicuna_v1_short`` (none), and the same for the text-pretraining samples. Counts only (no training).

    python benchmarks/tiny_tokens.py --data demo_out/data [--n 300]
"""
from __future__ import annotations

import argparse
import json
import os
import random

from data_pipelines.dataset import MultimodalDataset
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.mixture import MixtureSpec, SourceSpec, load_mixture
from mllm.config import apply_overrides
from mllm.model import MultimodalLM
from mllm.presets import get_preset


def file_stats(model, path: str, template: str, n: int) -> dict:
    records = load_mixture(MixtureSpec(sources=[SourceSpec(path=path, format="llava", max_samples=n)], seed=0))
    ds = MultimodalDataset.for_model(records, model, max_length=4096, template=template)
    tot = img = tgt = 0
    for i in range(len(ds)):
        s = ds[i]
        tot += int(s["length"])
        img += int((s["input_ids"] == model.image_token_id).sum())
        tgt += int((s["labels"] != -100).sum())
    k = max(1, len(ds))
    return {"samples": len(ds), "tokens_per_sample": round(tot / k, 1), "image_fraction": round(img / max(tot, 1), 3),
            "target_fraction": round(tgt / max(tot, 1), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a Shapes world directory (mllm data make-shapes)")
    p.add_argument("--n", type=int, default=300)
    a = p.parse_args()
    model = MultimodalLM.build(apply_overrides(get_preset("tiny"), []))
    out = {}
    for name in ("captions_train.json", "vqa_dialog_train.json", "instruct_train.json"):
        for template in ("vicuna_v1", "vicuna_v1_short"):
            tpl = "plain" if name.startswith("captions") else template
            out[f"{name} [{tpl}]"] = file_stats(model, os.path.join(a.data, name), tpl, a.n)
    from train_stages.text_pretrain import TextPretrainConfig, load_scenes, text_sample

    scenes = load_scenes(os.path.join(a.data, "scenes_train.jsonl"))[: a.n]
    rng = random.Random(0)
    for template in ("vicuna_v1", "vicuna_v1_short"):
        b = MultimodalProcessor.for_model(model, max_length=4096, template=template)
        lens, tg = [], []
        for i, sc in enumerate(scenes):
            s = text_sample(b, sc, rng, TextPretrainConfig(scenes="", output_dir=""), i)
            lens.append(int(s["length"]))
            tg.append(int((s["labels"] != -100).sum()))
        out[f"text pretraining [{template}]"] = {"samples": len(lens), "tokens_per_sample": round(sum(lens) / len(lens), 1),
                                                "image_fraction": 0.0, "target_fraction": round(sum(tg) / sum(lens), 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
