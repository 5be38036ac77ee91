"""Every config field is converted to its declared type (YAML's '2e-5' string included) or rejected naming the
field; TrainingArguments fields pass through; unknown names list close matches; --stage must agree."""
from __future__ import annotations

import argparse

import pytest

from mllm.config import ModelConfig, apply_overrides
from mllm.presets import get_preset
from train_stages.encoder_pretrain import EncoderPretrainConfig
from train_stages.specs import TrainConfig

BASE = "stage: align\noutput_dir: out\nmodel: tiny\n"


def _load(tmp_path, text, overrides=None, stage=None):
    y = tmp_path / "c.yaml"
    y.write_text(BASE + text)
    return TrainConfig.load(str(y), overrides, stage=stage)


def test_yaml_and_set_scientific_notation_become_floats(tmp_path):
    cfg = _load(tmp_path, "learning_rate: 2e-5\nweight_decay: 1e-1\nmodules: {vision: {mode: full, lr: 2e-6}}\n")
    assert cfg.learning_rate == 2e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.weight_decay == 0.1 and cfg.modules["vision"].lr == 2e-6
    cfg = _load(tmp_path, "", ["learning_rate=2e-5", "max_steps=7", "bf16=true", "lora.r=8", "lora.dropout=1e-2"])
    assert cfg.learning_rate == 2e-5 and isinstance(cfg.learning_rate, float)
    assert cfg.max_steps == 7 and cfg.bf16 is True and cfg.lora.r == 8 and cfg.lora.dropout == 0.01


@pytest.mark.parametrize("text,field,value", [
    ("learning_rate: fast\n", "learning_rate", "'fast'"),
    ("max_steps: 2.5\n", "max_steps", "2.5"),
    ("bf16: maybe\n", "bf16", "'maybe'"),
    ("lora: {r: many}\n", "lora.r", "'many'"),
    ("data: [{path: a.json, weight: heavy}]\n", r"data\[0\].weight", "'heavy'"),
])
def test_wrong_types_are_rejected_naming_field_and_value(tmp_path, text, field, value):
    with pytest.raises(ValueError, match=rf"c.yaml: .*{field}.*{value}"):
        _load(tmp_path, text)


def test_model_config_fields_are_typed():
    cfg = apply_overrides(get_preset("tiny"), ["max_length=1e3", "image.mean=[0.5, 0.5, 0.5]",
                                               "llm.config.rms_norm_eps=1e-6"])
    assert cfg.max_length == 1000 and isinstance(cfg.max_length, int)
    assert cfg.image.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"'anyres.enabled'.*'sometimes'"):
        apply_overrides(get_preset("tiny"), ["anyres.enabled=sometimes"])
    with pytest.raises(ValueError, match=r"unknown config field 'vision.feature_layr'; did you mean feature_layer"):
        ModelConfig.from_dict({"vision": {"feature_layr": -2}})
    with pytest.raises(ValueError, match=r"'image.std'.*3 items"):
        ModelConfig.from_dict({"image": {"std": [1, 2]}})


def test_encoder_config_uses_the_same_parser(tmp_path):
    from mllm import typed

    data = typed.apply_overrides({"data": "d.json", "output_dir": "o", "learning_rate": "2e-3"}, ["epochs=3"])
    cfg = typed.from_dict(EncoderPretrainConfig, data)
    assert cfg.learning_rate == 2e-3 and cfg.epochs == 3
    with pytest.raises(ValueError, match="unknown config field 'epoch'; did you mean epochs"):
        typed.from_dict(EncoderPretrainConfig, {**data, "epoch": 3})


def test_training_arguments_pass_through(tmp_path):
    from train_stages.hf_args import training_arguments

    cfg = _load(tmp_path, "optim: adamw_torch\ntf32: false\nrun_name: my-run\neval_strategy: 'no'\n"
                          "dataloader_pin_memory: false\ndataloader_drop_last: true\ntorch_compile: false\n"
                          "gradient_checkpointing_kwargs: {use_reentrant: true}\nadam_epsilon: 1e-6\n"
                          "training_args: {adam_beta2: 0.95}\nlearning_rate: 2e-5\n",
                ["dataloader_prefetch_factor=null", "warmup_steps=3"])
    ta = cfg.training_args
    assert ta["optim"] == "adamw_torch" and ta["run_name"] == "my-run" and ta["adam_beta2"] == 0.95
    assert ta["adam_epsilon"] == 1e-6 and isinstance(ta["adam_epsilon"], float)  # '1e-6' typed by HF's own type
    args = training_arguments(cfg, None)
    assert args.run_name == "my-run" and args.dataloader_drop_last is True and args.dataloader_pin_memory is False
    assert args.adam_beta2 == 0.95 and args.adam_epsilon == 1e-6 and args.warmup_steps == 3
    assert args.learning_rate == 2e-5 and args.remove_unused_columns is False  # ours stay ours
    assert getattr(args.optim, "value", args.optim) == "adamw_torch"


def test_unknown_names_list_close_matches(tmp_path):
    with pytest.raises(ValueError, match=r"c.yaml: unknown config field 'learnig_rate'; did you mean learning_rate"):
        _load(tmp_path, "learnig_rate: 1e-4\n")
    with pytest.raises(ValueError, match=r"unknown config field 'optimm'; did you mean optim"):
        _load(tmp_path, "", ["optimm=adamw_torch"])
    with pytest.raises(ValueError, match=r"training_args.remove_unused_columns is set by mllm"):
        _load(tmp_path, "remove_unused_columns: true\n")


def test_stage_flag_must_agree_with_the_yaml(tmp_path):
    with pytest.raises(ValueError, match=r"says stage: 'align' but the command asks for stage 'instruct'"):
        _load(tmp_path, "", stage="instruct")
    assert _load(tmp_path, "", stage="align").stage == "align"
    y = tmp_path / "nostage.yaml"
    y.write_text("output_dir: out\nmodel: tiny\n")
    assert TrainConfig.load(str(y), stage="multitask").stage == "multitask"
    # through the command line as well
    from train_stages import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    (tmp_path / "c.yaml").write_text(BASE)
    with pytest.raises(ValueError, match="says stage: 'align'"):
        cli.run(p.parse_args(["--stage", "multitask", "--config", str(tmp_path / "c.yaml")]))


def test_stage_data_defaults_auto_format_and_concatenation(tmp_path):
    cfg = _load(tmp_path, "data: [a.json, {path: b.parquet, split: validation, image_placement: keep}]\n")
    assert cfg.data[0].format is None and cfg.data[0].weight is None
    assert cfg.data[1].split == "validation" and cfg.data[1].image_placement == "keep"
    from train_stages.data import stage_mixture

    spec = stage_mixture(cfg)
    assert [s.format for s in spec.sources] == ["auto", "auto"] and [s.weight for s in spec.sources] == [None, None]


def test_mixture_yaml_is_typed_too(tmp_path):
    from data_pipelines.mixture import MixtureSpec

    y = tmp_path / "mix.yaml"
    y.write_text("seed: '3'\nsources:\n  - {path: a.json, weight: 2e-1}\n  - {path: b.json, weight: 1}\n")
    spec = MixtureSpec.from_yaml(str(y))
    assert spec.seed == 3 and spec.sources[0].weight == 0.2 and isinstance(spec.sources[0].weight, float)
    y.write_text("sources:\n  - {path: a.json, max_samples: lots}\n")
    with pytest.raises(ValueError, match=r"mix.yaml: .*sources\[0\].max_samples.*'lots'"):
        MixtureSpec.from_yaml(str(y))
