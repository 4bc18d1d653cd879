"""Dataclass configs: one source of truth for CLI flags, YAML files and the Python API.

Each field is documented once, in ``metadata["help"]``; :func:`add_flags` turns fields into ``--flags``
and :func:`load_config` merges defaults < YAML (``--config run.yaml``) < flags given on the command line,
then validates everything at once. YAML keys are the field names (``max_steps`` or ``max-steps``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError
from rewardhub.options import coerce, parse_key_values, type_name
from rewardhub.testing import BUILTIN_TINY


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (mutable defaults handled)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model: str = opt(BUILTIN_TINY, "model to train: hub id, local directory, or builtin:tiny-llama (built offline)")
    dtype: str = opt("auto", "parameter dtype: auto, float32, bfloat16, float16")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    lora_r: int = opt(0, "LoRA rank (peft); 0 trains all parameters")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")


@dataclass
class DataArgs:
    data: str = opt("arithmetic", "training data: a task (arithmetic, arithmetic:test), a .jsonl/.json/.parquet/.csv "
                    "file, a directory, or a hub dataset id")
    eval_data: str | None = opt(None, "held-out data (default: the task's test split when --data is a task)")
    data_args: dict = opt({}, "task options as key=value, repeatable (e.g. digits=3, n_ops=2)", flag="--data-arg")
    column_map: dict = opt({}, "rename columns as src=dst, repeatable (e.g. question=prompt)")
    max_length: int = opt(256, "truncate prompt+completion to this many tokens (the prompt is cut from the left)")
    eval_size: int = opt(200, "held-out rows used at each evaluation")


@dataclass
class TrainArgs:
    out: str = opt("runs/latest", "output directory: metrics.jsonl, checkpoints/, model/")
    seed: int = opt(0, "random seed (data order, initialisation, sampling)")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_scheduler: str = opt("cosine", "transformers LR schedule: linear, cosine, constant, constant_with_warmup, ...")
    warmup_ratio: float = opt(0.05, "share of steps spent warming the learning rate up")
    max_steps: int = opt(1000, "optimizer steps")
    batch_size: int = opt(64, "sequences per micro-batch per device")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    log_every: int = opt(10, "log metrics every N steps")
    eval_every: int = opt(200, "evaluate every N steps (0: only at the end)")
    save_every: int = opt(500, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    resume: bool = opt(True, "resume from the newest checkpoint in --out if there is one")
    report_to: str = opt("none", "tracker: none, tensorboard, wandb (when installed)")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")


@dataclass
class SFTConfig(ModelArgs, DataArgs, TrainArgs):
    """Supervised fine-tuning: next-token loss on the completion only."""

    completion_only_loss: bool = opt(True, "put the loss on completion tokens only (not the prompt)")
    eval_max_new_tokens: int = opt(16, "tokens generated per prompt when measuring held-out accuracy")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if problems:
            raise ConfigError(problems)


def validate_train_args(cfg: Any) -> list[str]:
    """Problems with the fields shared by every training config (empty list: fine)."""
    problems = []
    positive = ("max_steps", "batch_size", "grad_accum", "log_every", "max_length", "keep_checkpoints")
    for name in positive:
        if getattr(cfg, name, 1) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "save_every", "eval_size", "threads"):
        if getattr(cfg, name, 0) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if getattr(cfg, "lr", 1) <= 0:
        problems.append(f"lr must be > 0, got {cfg.lr}")
    if not 0 <= getattr(cfg, "warmup_ratio", 0) < 1:
        problems.append(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if getattr(cfg, "report_to", "none") not in ("none", "tensorboard", "wandb"):
        problems.append(f"report_to must be none, tensorboard or wandb, got {cfg.report_to!r}")
    return problems


# ------------------------------------------------------------------------------------------------------------
# dataclass <-> argparse / YAML
# ------------------------------------------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field; defaults are shown in --help but not injected (so YAML can win)."""
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        annotation = types[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        flag = flag_of(f)
        if annotation is dict:
            parser.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS, help=help_text)
        elif annotation is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, metavar=type_name(annotation).upper().replace(" ", ""),
                                default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML file whose keys are these options (flags given here override it)")


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type, values: Mapping[str, Any], source: str = "config"):
    """Instantiate ``cls`` from raw values (strings from flags or YAML scalars), reporting all problems at once."""
    types = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    problems, kwargs = [], {}
    for key, raw in values.items():
        if key not in names:
            close = [n for n in names if n.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            problems.append(f"unknown option {key!r} in {source}{hint}")
            continue
        annotation = types[key]
        try:
            if annotation is dict and isinstance(raw, list):
                raw = parse_key_values(raw, f"--{key.replace('_', '-')}")
            kwargs[key] = coerce(raw, annotation)
        except (ValueError, ConfigError) as exc:
            problems.append(f"option {key!r}: {exc} (expected {type_name(annotation)})")
    if problems:
        raise ConfigError(problems)
    cfg = cls(**kwargs)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def load_config(cls: type, args: argparse.Namespace):
    """defaults < YAML ``--config`` < explicit flags -> a validated ``cls`` instance."""
    explicit = dict(vars(args))
    explicit.pop("command", None)
    explicit.pop("handler", None)
    yaml_path = explicit.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    values = read_yaml(yaml_path) if yaml_path else {}
    values.update({k: v for k, v in explicit.items() if k in names})
    return build_config(cls, values, source=str(yaml_path) if yaml_path else "flags")


ALGOS = ("ppo", "grpo", "rloo", "dpo")


@dataclass
class RewardArgs:
    reward: str = opt("verifier", "reward: a registered name, a weighted mix (verifier=1.0,length=0.1) or "
                      "module:attr / file.py:attr")
    reward_args: dict = opt({}, "provider option as key=value (or PROVIDER.key=value in a mix), repeatable",
                            flag="--reward-arg")


@dataclass
class TrainConfig(ModelArgs, DataArgs, TrainArgs, RewardArgs):
    """Reward-driven training: the algorithm plus the reward source."""

    algo: str = opt("ppo", f"algorithm: {', '.join(ALGOS)}")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if self.algo not in ALGOS:
            problems.append(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        if problems:
            raise ConfigError(problems)
