"""Run with torchrun --nproc_per_node 2: ZeRO-3, rank 0 sees only image batches, rank 1 only text-only
batches. Every rank must run the vision tower each step (always_run_vision), or the parameter gathers of
the two ranks stop matching and the run hangs. Prints "MIXED_OK <steps>" on rank 0 when done.
"""
import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mllm.model import MultimodalLM  # noqa: E402
from tests._tiny import make_batch, tiny_config  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = int(os.environ.get("MIXED_STEPS", "4"))


def main():
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=True))
    model.always_run_vision = os.environ.get("ALWAYS_RUN_VISION", "1") == "1"
    with open(os.path.join(os.path.dirname(HERE), "..", "train_stages", "zero3.json")) as f:
        ds_cfg = json.load(f)
    ds_cfg.update({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                   "train_batch_size": 2 * dist.get_world_size(), "bf16": {"enabled": False},
                   "fp16": {"enabled": False},
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
    ds_cfg["zero_optimization"] = {k: (v if v != "auto" else 1e6) for k, v in ds_cfg["zero_optimization"].items()}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()],
                                           config=ds_cfg)
    for step in range(STEPS):
        if rank == 0:
            samples = [("<image> describe", [(40, 70)]), ("look <image> here", [(32, 32)])]
        else:
            samples = [("only text on this rank", []), ("more plain text", [])]
        batch = make_batch(model, samples, seed=step)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = engine(**batch, labels=labels).loss
        engine.backward(loss)
        engine.step()
    dist.barrier()
    if rank == 0:
        print(f"MIXED_OK {STEPS}", flush=True)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
