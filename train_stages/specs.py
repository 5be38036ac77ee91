"""Stages are data: what each module does (frozen | full | lora | qlora), its learning rate, the ZeRO
config, the chat template. One runner (``train_stages.runner``) executes any of them.

    align      connector only, on captions (`plain`), ZeRO-2            (LLaVA stage 1)
    multitask  connector + LLM (full or LoRA), tower optionally, ZeRO-3 (VQA/caption mixture)
    instruct   connector + LLM (full, LoRA or QLoRA), ZeRO-3           (LLaVA stage 2)
    gen        the image-generation head only (queries, gen connector, DiT), on prompt/image pairs; the
               tower, connector and LLM frozen, so understanding is bit-identical afterwards; ZeRO-2

A run is described by a ``TrainConfig`` (YAML); its ``modules`` entries override the stage's defaults,
e.g. ``modules: {llm: {mode: lora}, vision: {mode: full, lr: 2.0e-6}}``. A stage's ``objective`` says what
its data is: "lm" (conversations, next-token loss) or "gen" (gen_train.json prompt/image pairs, the head's
flow loss); the gen stage adds a fresh head from ``gen_head`` when ``init_from`` has none.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from mllm import typed
from mllm.modules import MODULES
from mllm.registry import Registry

from .hf_args import split_training_args

MODES = ("frozen", "full", "lora", "qlora")


@dataclass
class ModuleSpec:
    mode: str = "frozen"
    lr: Optional[float] = None  # None: the run's learning_rate

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"module mode {self.mode!r} is not one of {', '.join(MODES)}")


@dataclass
class StageSpec:
    name: str
    modules: Dict[str, ModuleSpec]
    template: Optional[str]  # None: the model's own chat template
    zero: str  # "zero2" | "zero3" | "zero3_offload" | "none" | a path to a DeepSpeed JSON
    learning_rate: float
    description: str = ""
    objective: str = "lm"  # "lm": conversations -> next-token loss; "gen": prompt/image pairs -> flow loss

    def module(self, name: str) -> ModuleSpec:
        return self.modules.get(name, ModuleSpec())


STAGES: Registry = Registry("stage")


def _spec(**modes) -> Dict[str, ModuleSpec]:
    return {k: ModuleSpec(mode=v) for k, v in modes.items()}


STAGES.add("align", StageSpec(
    name="align", modules=_spec(vision="frozen", connector="full", llm="frozen", gen_head="frozen"),
    template="plain", zero="zero2", learning_rate=1e-3,
    description="pretraining alignment: only the connector learns, on image captions"))
STAGES.add("multitask", StageSpec(
    name="multitask", modules=_spec(vision="frozen", connector="full", llm="full", gen_head="frozen"),
    template=None, zero="zero3", learning_rate=2e-5,
    description="multitask: connector + LLM on a VQA/caption mixture; tower optionally unfrozen"))
STAGES.add("instruct", StageSpec(
    name="instruct", modules=_spec(vision="frozen", connector="full", llm="full", gen_head="frozen"),
    template=None, zero="zero3", learning_rate=2e-5,
    description="instruction tuning: multi-turn conversations; LLM full, LoRA or QLoRA"))
STAGES.add("gen", StageSpec(
    name="gen", modules=_spec(vision="frozen", connector="frozen", llm="frozen", gen_head="full"),
    template=None, zero="zero2", learning_rate=1e-3, objective="gen",
    description="image generation: only the DiT head (queries, gen connector, DiT) learns, on prompt/image pairs"))


@dataclass
class DataSource:
    path: str
    # None: "auto" (detected from the file: llava, sharegpt or hf) for lm stages, "gen" for the gen stage
    format: Optional[str] = None
    image_root: Optional[str] = None
    # None everywhere: every record of every source once (concatenation); weights everywhere: shares
    weight: Optional[float] = None
    max_samples: Optional[int] = None
    split: str = "train"  # HF datasets sources
    image_placement: Optional[str] = None  # None: the format's default ("front" for LLaVA JSON)


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class TrainConfig:
    stage: str
    output_dir: str
    # explicit input model: a previous stage's output directory (never guessed from names) ...
    init_from: Optional[str] = None
    # ... or, for the first stage only, a preset name (with overrides) when there is no previous stage
    model: Optional[str] = None
    model_overrides: List[str] = field(default_factory=list)
    data: List[DataSource] = field(default_factory=list)
    # a mixture YAML (data_pipelines.mixture: sources, seed, num_samples) instead of, or besides, `data`;
    # `data: mix.yaml` means the same
    mixture: Optional[str] = None
    num_samples: Optional[int] = None  # mixture size; None: the sum of the sources' sizes
    streaming: bool = False  # read the sources as a stream (needs max_steps > 0)
    template: Optional[str] = None  # default: the stage's
    modules: Dict[str, ModuleSpec] = field(default_factory=dict)
    lora: LoraSpec = field(default_factory=LoraSpec)
    merge_lora: bool = True
    deepspeed: Optional[str] = None  # default: the stage's; "none" disables
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: Optional[float] = None  # default: the stage's
    num_train_epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 42
    report_to: List[str] = field(default_factory=list)  # e.g. ["tensorboard"]
    max_length: Optional[int] = None  # default: the model's
    dataloader_num_workers: int = 0
    group_by_modality_length: bool = True
    packing: bool = False
    strict_data: bool = False
    resume: Optional[str] = None  # None | "auto" | a checkpoint directory
    always_run_vision: Optional[bool] = None  # default: on under ZeRO-3 (keeps ranks in lock-step)
    # gen stage: the head to add when init_from has none (mllm.gen.head.GenHeadConfig fields, e.g.
    # {num_queries: 16, dit: tiny}); None = GenHeadConfig's defaults. A model that has a head keeps it (then a
    # gen_head given here must describe that same head).
    gen_head: Optional[Dict[str, Any]] = None
    # gen stage: decay of an exponential moving average of the head's weights, which the saved model keeps
    # (as DiT samples from its EMA); 0 = the last step's weights
    ema_decay: float = 0.0
    # any other transformers.TrainingArguments field (optim, tf32, run_name, eval_strategy, dataloader_*,
    # torch_compile, gradient_checkpointing_kwargs, ...): given at the top level of the YAML or here
    training_args: Dict[str, Any] = field(default_factory=dict)

    # ---- resolution ---------------------------------------------------------------------------------
    @property
    def spec(self) -> StageSpec:
        return STAGES.get(self.stage)

    def module(self, name: str) -> ModuleSpec:
        return self.modules.get(name) or self.spec.module(name)

    def resolved_template(self, model_template: str) -> str:
        return self.template or self.spec.template or model_template

    def resolved_lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else self.spec.learning_rate

    def resolved_zero(self) -> str:
        return self.deepspeed or self.spec.zero

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "<config>") -> "TrainConfig":
        data = split_training_args(_normalise(data), ours={f.name for f in dataclasses.fields(cls)}, where=source)
        for req in ("stage", "output_dir"):
            if not data.get(req):
                raise ValueError(f"{source}: '{req}' is required")
        for k in data.get("modules") or {}:
            if k not in MODULES:
                raise ValueError(f"{source}: unknown module {k!r} in 'modules'; known: {', '.join(MODULES)}")
        cfg = typed.from_dict(cls, data, where=source)
        STAGES.get(cfg.stage)  # unknown stage -> ValueError listing the known ones
        if cfg.init_from is None and cfg.model is None:
            raise ValueError(f"{source}: set 'init_from' (the previous stage's output directory) or, for a first "
                             f"stage, 'model' (a preset name)")
        return cfg

    @classmethod
    def load(cls, path: str, overrides: Optional[List[str]] = None, stage: Optional[str] = None) -> "TrainConfig":
        """The YAML at ``path`` with ``key=value`` overrides; ``stage`` (the command line's ``--stage``) must
        agree with the file's ``stage:`` when it has one."""

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        if stage is not None:
            if data.get("stage") not in (None, stage):
                raise ValueError(f"{path} says stage: {data['stage']!r} but the command asks for stage {stage!r}; "
                                 f"fix one of them (the file's stage decides the frozen modules and the data)")
            data["stage"] = stage
        if isinstance(data.get("data"), str) and data["data"].endswith((".yaml", ".yml")):
            data["mixture"] = data.pop("data")
        for key in ("mixture",):  # relative to the config file, like the mixture's own paths
            if isinstance(data.get(key), str) and not os.path.isabs(data[key]) and not os.path.exists(data[key]):
                data[key] = os.path.join(os.path.dirname(os.path.abspath(path)), data[key])
        data = typed.apply_overrides(_normalise(data), overrides or [])
        return cls.from_dict(data, source=path)


def _normalise(data: Dict[str, Any]) -> Dict[str, Any]:
    """Short forms -> mappings: ``data: [file.json]``, ``modules: {llm: lora}``."""
    data = dict(data)
    if isinstance(data.get("data"), (list, str)):
        items = data["data"] if isinstance(data["data"], list) else [data["data"]]
        data["data"] = [d if isinstance(d, (dict, DataSource)) else {"path": str(d)} for d in items]
    if isinstance(data.get("modules"), dict):
        data["modules"] = {k: v if isinstance(v, (dict, ModuleSpec)) else {"mode": str(v)}
                           for k, v in data["modules"].items()}
    return data
