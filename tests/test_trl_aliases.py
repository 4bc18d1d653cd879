"""TRL's option names as aliases of ours, in YAML configs and as flags."""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from rewardhub.config import DPOConfig, RewardModelConfig, RLConfig, SFTConfig, add_flags, build_config, load_config
from rewardhub.errors import ConfigError
from rewardhub.trl_names import TRL_ALIASES, aliases_of, trl_alias_table

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = (SFTConfig, RLConfig, DPOConfig, RewardModelConfig)

#: A valid value for each option an alias may set (not its default, so the alias visibly took effect).
VALUES = {"lr": 0.002, "batch_size": 3, "grad_accum": 2, "out": "runs/aliased", "log_every": 3, "save_every": 7,
          "eval_every": 9, "lr_scheduler": "linear", "keep_checkpoints": 5, "model": "some/model",
          "dtype": "bfloat16", "data": "arithmetic-cot", "max_length": 128, "max_new_tokens": 12, "clip_eps": 0.3,
          "clip_eps_high": 0.28, "clip_value": 0.4, "ppo_epochs": 2, "kl_loss_coef": 0.04, "kl_coef": 0.02,
          "precompute_ref": False, "center_coef": 0.01, "generation_server": "http://127.0.0.1:8000/v1"}
#: TRL's value of an alias with a value map, and ours.
MAPPED = {"loss_type": ("dr_grpo", "seq-mean-token-sum-norm")}


def cases():
    """(config, TRL name, our option, TRL's value, our value, algo) for every alias that has an equivalent."""
    out = []
    for cls in CONFIGS:
        for name, alias in sorted(aliases_of(cls).items()):
            for algo, target in (alias.by_algo or {None: alias.target}).items():
                if target is None:
                    continue
                trl, ours = MAPPED[name] if name in MAPPED else (VALUES[target], VALUES[target])
                out.append(pytest.param(cls, name, target, trl, ours, algo,
                                        id=f"{cls.__name__}-{name}" + (f"-{algo}" if algo else "")))
    return out


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_flags(parser, cls)
    return parser.parse_args(argv)


def flag_argv(name, value):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


@pytest.mark.parametrize(("cls", "name", "target", "trl", "ours", "algo"), cases())
def test_each_alias_in_yaml_and_as_a_flag(tmp_path, cls, name, target, trl, ours, algo):
    extra = {"algo": algo} if algo else {}
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({name: trl, **extra}))
    from_yaml = load_config(cls, parse(cls, ["--config", str(file)]))
    assert getattr(from_yaml, target) == ours
    from_flag = load_config(cls, parse(cls, [*flag_argv(name, trl), *(["--algo", algo] if algo else [])]))
    assert getattr(from_flag, target) == ours
    assert getattr(build_config(cls, {name: trl, **extra}), target) == ours  # the Python API too


def test_every_alias_names_a_field_and_no_alias_shadows_one():
    for cls in CONFIGS:
        fields = {f.name for f in dataclasses.fields(cls)}
        for name, alias in aliases_of(cls).items():
            assert name not in fields
            targets = [alias.target, *(alias.by_algo or {}).values()]
            assert all(t in fields for t in targets if t is not None), (cls.__name__, name)
            assert any(targets) or alias.error, (cls.__name__, name)
    assert set(TRL_ALIASES[RLConfig]) >= {"beta", "epsilon", "loss_type", "max_completion_length"}
    assert "beta" not in aliases_of(DPOConfig)  # DPO's own field: our name wins


@pytest.mark.parametrize(("cls", "values", "message"), [
    (RLConfig, {"per_device_train_batch_size": 16}, r"GRPO counts completions per device .* batch_size = "
                                                    r"per_device_train_batch_size x gradient_accumulation_steps"),
    (SFTConfig, {"num_train_epochs": 3}, r"counts optimizer steps, not epochs: set max_steps"),
    (DPOConfig, {"bf16": True}, r"bf16 is mixed precision .*dtype: bfloat16"),
    (RLConfig, {"beta": 0.1, "algo": "ppo"}, r"'beta' .* no equivalent with algo ppo .* both call it kl_coef"),
    (RLConfig, {"loss_type": "bnpo", "algo": "grpo"}, r"loss_type='bnpo' .* no equivalent: .*bnpo"),
    (DPOConfig, {"max_completion_length": 64}, r"DPO max_completion_length truncates the replies"),
    (RewardModelConfig, {"max_prompt_length": 64}, r"max_length = max_prompt_length \+ the completion length"),
    (SFTConfig, {"warmup_steps": 10}, r"warmup_ratio = warmup_steps / max_steps"),
])
def test_an_alias_that_means_something_else_here_says_what_to_use(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(cls, values)


def test_mismatched_aliases_as_flags():
    with pytest.raises(ConfigError, match=r"'bf16' .*mixed precision"):
        load_config(SFTConfig, parse(SFTConfig, ["--bf16"]))  # TRL's flag without a value
    with pytest.raises(ConfigError, match=r"'per_device_train_batch_size' .*counts prompts"):
        load_config(RLConfig, parse(RLConfig, ["--per-device-train-batch-size", "16"]))


def test_alias_and_own_name_both_given_is_an_error(tmp_path):
    file = tmp_path / "both.yaml"
    file.write_text("learning_rate: 0.001\nlr: 0.002\n")
    with pytest.raises(ConfigError, match=r"both 'lr' and 'learning_rate' \(TRL's name for 'lr'\)"):
        load_config(SFTConfig, parse(SFTConfig, ["--config", str(file)]))
    with pytest.raises(ConfigError, match=r"both 'lr' and 'learning_rate'.* in the flags"):
        load_config(SFTConfig, parse(SFTConfig, ["--learning-rate", "1e-3", "--lr", "2e-3"]))
    with pytest.raises(ConfigError, match=r"both 'epsilon' and 'cliprange' \(TRL's name for 'clip_eps'\)"):
        build_config(RLConfig, {"epsilon": 0.2, "cliprange": 0.3})
    # different layers: a flag overrides the YAML whichever name each uses
    file.write_text("learning_rate: 0.001\n")
    assert load_config(SFTConfig, parse(SFTConfig, ["--config", str(file), "--lr", "0.002"])).lr == 0.002
    file.write_text("lr: 0.001\n")
    assert load_config(SFTConfig, parse(SFTConfig, ["--config", str(file), "--learning-rate", "0.002"])).lr == 0.002


def test_unknown_keys_stay_errors_and_bad_alias_values_name_the_alias():
    with pytest.raises(ConfigError, match=r"unknown option 'learning_rat' .*did you mean learning_rate\?"):
        build_config(SFTConfig, {"learning_rat": 0.1})
    with pytest.raises(ConfigError, match=r"option 'log_every' \(given as TRL's 'logging_steps'\): '0.5' is not an"):
        load_config(SFTConfig, parse(SFTConfig, ["--logging-steps", "0.5"]))


def test_aliases_apply_before_the_model_preset():
    """The built-in model's RL preset sets lr and algo grpo; a TRL name in the YAML wins over the preset, and
    GRPO's beta resolves with the preset's algo."""
    from rewardhub.config import RL_PRESETS

    ns = parse(RLConfig, ["--learning-rate", "0.003", "--beta", "0.01"])
    cfg = load_config(RLConfig, ns, RL_PRESETS)
    assert cfg.algo == "grpo" and cfg.lr == 0.003 and cfg.kl_loss_coef == 0.01


def test_alias_flags_are_hidden_from_help_but_announced():
    parser = argparse.ArgumentParser()
    add_flags(parser, RLConfig, DPOConfig)
    text = parser.format_help()
    assert "--learning-rate" in text and "--max-completion-length" not in text  # only in the epilog's example
    assert "TRL's names for these options are accepted too" in text


def test_readme_table_matches_the_code():
    text = README.read_text()
    found = re.search(r"<!-- trl-aliases:start -->\n(.*?)\n<!-- trl-aliases:end -->", text, re.S)
    assert found, "README lacks the TRL alias table markers"
    assert found.group(1) == trl_alias_table(), "regenerate with rewardhub.trl_names.trl_alias_table()"
