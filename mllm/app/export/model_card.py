"""The model card (``README.md``) written into every export.

It says what the model is made of (tower, connector, LLM, AnyRes, chat template), how it was trained (each
stage found by following ``init_from`` back from the exported checkpoint: its ``train_config.json`` and
``summary.json``), the scores passed to ``mllm export --scores`` (``scores.json`` files of ``mllm eval``),
and how to load it with transformers (the exact call whose pixels match training) and serve it with vLLM::

    write_model_card(model, "runs/hf", route="llava_next", source="runs/instruct", scores=["runs/eval/scores.json"])
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

CARD_FILE = "README.md"
# the README's loading lines, for the transformers major version 5 and 4 (hf_runner.processor_kwargs)
LOAD_LINES = ('processor = AutoProcessor.from_pretrained("{path}", backend="pil")  # transformers 4.x: use_fast=False',
              'model = AutoModelForImageTextToText.from_pretrained("{path}"{trust})')


def stage_history(source: Optional[str], limit: int = 16) -> List[Dict[str, Any]]:
    """The training stages behind checkpoint ``source``, oldest first (each: stage, data, steps, loss)."""
    out: List[Dict[str, Any]] = []
    seen = set()
    path = source
    while path and os.path.isdir(path) and path not in seen and len(out) < limit:
        seen.add(path)
        cfg = _read(os.path.join(path, "train_config.json"))
        if cfg is None:
            break
        summary = _read(os.path.join(path, "summary.json")) or {}
        modules = {k: (v.get("mode") if isinstance(v, dict) else v) for k, v in (cfg.get("modules") or {}).items()}
        out.append({"stage": cfg.get("stage"), "output_dir": path, "model": cfg.get("model"),
                    "data": [d.get("path") for d in cfg.get("data") or []] + ([cfg["mixture"]] if cfg.get("mixture")
                                                                            else []),
                    "modules": modules, "learning_rate": cfg.get("learning_rate"), "steps": summary.get("steps"),
                    "last_loss": summary.get("last_loss"), "world_size": summary.get("world_size")})
        path = cfg.get("init_from")
    return out[::-1]


def _read(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _scores(paths: Sequence[str]) -> List[str]:
    rows = []
    for p in paths:
        data = _read(p)
        if data is None:
            raise FileNotFoundError(f"--scores {p}: no such file")
        flat = _numbers(data)
        info = _read(os.path.join(os.path.dirname(os.path.abspath(p)), "run_info.json")) or {}
        bench = info.get("benchmark") or os.path.basename(os.path.dirname(os.path.abspath(p)))
        rows += [f"| {bench} | {k} | {v:.4g} |" for k, v in sorted(flat.items())]
    return rows


def _numbers(data: Any, prefix: str = "") -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def render_card(model, route: str, *, out_dir: str, source: Optional[str] = None,
                scores: Sequence[str] = ()) -> str:
    cfg = model.config
    remote = route == "remote"
    tower = cfg.vision.name_or_path or f"{cfg.vision.kind} built from its config (no pretrained weights)"
    llm = cfg.llm.name_or_path or f"{cfg.llm.config.get('model_type', '?')} built from its config"
    arch = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}.get(
        route, "remote code (auto_map; trust_remote_code=True)")
    lines = [f"# {os.path.basename(os.path.abspath(out_dir))}", "",
             f"A multimodal LLM exported by mllm from `{source or cfg.name}`: {arch}.", "",
             "| part | what |", "|---|---|",
             f"| vision tower | {tower} (`{cfg.vision.kind}`, feature layer {cfg.vision.feature_layer}) |",
             f"| connector | `{cfg.connector.kind}`" + (f", {cfg.connector.num_queries} queries" if
                                                          cfg.connector.kind == "qformer" else "") + " |",
             f"| LLM | {llm} |",
             f"| AnyRes | {'on, grid ' + str(cfg.anyres.grid_pinpoints) if cfg.anyres.enabled else 'off'} |",
             f"| chat template | `{cfg.chat_template}` (in `chat_template.jinja`) |",
             f"| image token | `{cfg.image_token}` |", ""]
    history = stage_history(source)
    lines += ["## Training", ""]
    if history:
        lines += ["| stage | data | trained modules | lr | steps | last loss |", "|---|---|---|---|---|---|"]
        for h in history:
            trained = ", ".join(f"{k}: {v}" for k, v in h["modules"].items()) or "the stage's defaults"
            lines.append(f"| {h['stage']} | {', '.join(map(str, h['data']))} | {trained} | {h['learning_rate']} | "
                         f"{h['steps']} | {h['last_loss'] if h['last_loss'] is None else round(h['last_loss'], 4)} |")
    else:
        lines.append("No training record (train_config.json) was found beside the exported checkpoint.")
    lines += ["", "## Scores", ""]
    rows = _scores(scores)
    lines += (["| benchmark | metric | value |", "|---|---|---|"] + rows) if rows else \
        ["Not measured for this export (`mllm export --scores runs/eval/scores.json` adds them)."]
    trust = ", trust_remote_code=True" if remote else ""
    load = [line.format(path=out_dir, trust=trust) for line in LOAD_LINES]
    if remote:
        load[0] = load[0].replace('backend="pil")', 'backend="pil", trust_remote_code=True)')
    lines += ["", "## Load with transformers", "", "```python",
              "from transformers import AutoProcessor, AutoModelForImageTextToText", *load,
              'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]',
              "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
              'inputs = processor(images=[image], text=prompt, add_special_tokens=False, return_tensors="pt")',
              "out = model.generate(**inputs, max_new_tokens=64)", "```", "",
              "`backend=\"pil\"` (transformers 5.x) / `use_fast=False` (4.x) selects the PIL image processor: the "
              "pixels the model was trained on. Without it, 5.x uses the torchvision resize, whose pixels differ "
              "slightly. `add_special_tokens=False`: the chat template already writes BOS.", ""]
    lines += ["## Serve", ""]
    if remote:
        lines += ["This export carries its own modeling code, which vLLM does not run. Serve it with "
                  f"`mllm serve --model {out_dir}` (OpenAI Chat Completions API) or plain transformers.", ""]
    else:
        lines += ["```bash", f"vllm serve {out_dir} --chat-template {out_dir}/chat_template.jinja",
                  "curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": "
                  f"\"{out_dir}\", \"messages\": [{{\"role\": \"user\", \"content\": [{{\"type\": \"image_url\", "
                  "\"image_url\": {\"url\": \"https://example.com/cat.png\"}}, {\"type\": \"text\", \"text\": "
                  "\"What is this?\"}]}]}'", "```", ""]
    return "\n".join(lines)


def write_model_card(model, out_dir: str, route: str, *, source: Optional[str] = None,
                     scores: Sequence[str] = ()) -> str:
    path = os.path.join(out_dir, CARD_FILE)
    with open(path, "w") as f:
        f.write(render_card(model, route, out_dir=out_dir, source=source, scores=scores))
    return path
