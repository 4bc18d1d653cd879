"""Dataclass configs: one source of truth for CLI flags, YAML files and the Python API.

Each field is documented once, in ``metadata["help"]``; :func:`add_flags` turns fields into ``--flags``
and :func:`load_config` merges defaults < YAML (``--config run.yaml``) < flags given on the command line,
then validates everything at once. YAML keys are the field names (``max_steps`` or ``max-steps``), or TRL's
names for the same settings (``learning_rate`` for ``lr``; :data:`rewardhub.trl_names.TRL_ALIASES`), which
flags take too.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardhub.errors import ConfigError
from rewardhub.maths.choices import DPOLoss, KLEstimator, LossAgg, RLAlgo
from rewardhub.options import coerce, parse_key_values, type_name
from rewardhub.tiny_model import BUILTIN_TINY


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A config field: its default and its one-clause help text (mutable defaults handled)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model: str = setting(BUILTIN_TINY, "model to train: hub id, local directory, or builtin:tiny-llama (built offline)")
    dtype: str = setting("auto", "parameter dtype: auto, float32, bfloat16, float16")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass to save memory")
    lora_r: int = setting(0, "LoRA rank (peft); 0 trains all parameters")
    lora_alpha: int = setting(32, "LoRA alpha")
    lora_dropout: float = setting(0.0, "LoRA dropout")
    lora_target_modules: str = setting("all-linear", "modules that get LoRA adapters: all-linear, or names "
                                       "separated by commas (q_proj,v_proj)")
    merge_lora: bool = setting(True, "save the final model with the LoRA adapter merged in (a plain model that "
                               "loads without the base); the adapter alone goes to OUT/adapter either way")
    chat_template: str | None = setting(None, "a Jinja chat template file, for a model whose tokenizer has none "
                                        "(or to replace its own); saved with the final model")


@dataclass
class DataArgs:
    data: str = setting("arithmetic", "training data: a task, a .jsonl/.json/.parquet/.csv file, a directory, "
                            "or a hub dataset id")
    eval_data: str | None = setting(None, "held-out data (default: the task's test split when --data is a task)")
    data_args: dict = setting({}, "task options as key=value, repeatable (e.g. digits=3, n_ops=2)", flag="--data-arg")
    column_map: dict = setting({}, "rename columns as src=dst, repeatable (e.g. question=prompt)")
    max_length: int = setting(256, "truncate prompt+completion to this many tokens (the prompt is cut from the left)")
    eval_size: int = setting(200, "held-out rows used at each evaluation")


@dataclass
class TrainArgs:
    out: str = setting("", "run directory: run.json, metrics.jsonl, checkpoints/, model/; one run each (a rerun "
                       "resumes it when the config matches)", shown_default="runs/COMMAND: runs/sft, runs/ppo, "
                       "runs/dpo, ...")
    seed: int = setting(0, "random seed (data order, initialisation, sampling)")
    lr: float = setting(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    lr_scheduler: str = setting("cosine", "transformers LR schedule (linear, cosine, constant, ...)")
    warmup_ratio: float = setting(0.05, "share of steps spent warming the learning rate up")
    max_steps: int = setting(1000, "optimizer steps")
    batch_size: int = setting(64, "sequences per micro-batch per device")
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 disables)")
    log_every: int = setting(10, "log metrics every N steps")
    eval_every: int = setting(200, "evaluate every N steps (0: only at the end)")
    save_every: int = setting(500, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = setting(2, "how many recent checkpoints to keep")
    resume: bool = setting(True, "resume the run in --out from its newest checkpoint (only if the run was started "
                           "with the same settings; --no-resume refuses an --out that holds a run)")
    overwrite: bool = setting(False, "start over in an --out that holds another run: its run.json, metrics, "
                              "checkpoints, completions and model are deleted first")
    force_resume: bool = setting(False, "resume the run in --out although some settings differ from the ones it "
                                 "was started with (e.g. a longer --max-steps); the new values apply from there")
    report_to: Literal["none", "tensorboard", "wandb"] = setting("none", "experiment tracker (when installed)")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    max_time: str | None = setting(None, "training-time budget: seconds or a duration (90, 90s, 10m, 1h30m); the run "
                                   "stops at the first step boundary past it, then checkpoints, evaluates and saves as "
                                   "at --max-steps (none: no limit)")
    #: what ``runs/COMMAND`` says for this config (``algo`` for RL and DPO)
    command: typing.ClassVar[str] = "train"

    def __post_init__(self) -> None:
        if not self.out:  # each command its own default directory, so two commands never share one by accident
            self.out = f"runs/{self.run_kind}"

    @property
    def run_kind(self) -> str:
        """The kind of run (``sft``, ``ppo``, ``dpo``, ``reward-model``, ...): its default directory, its run.json."""
        return getattr(self, "algo", None) or self.command


@dataclass
class RewardArgs:
    reward: str | None = setting(None, "reward: a registered name, a weighted mix (verifier=1.0,length=0.1) or "
                                 "module:attr / file.py:attr; default: the task's reward (verifier for the arithmetic "
                                 "tasks), else verifier")
    reward_args: dict = setting({}, "provider option as key=value (or PROVIDER.key=value in a mix), repeatable",
                            flag="--reward-arg")
    verifier_files: list = setting([], "python file whose @rewardhub.verifier functions to register, repeatable",
                               flag="--verifier")


@dataclass
class SFTConfig(ModelArgs, DataArgs, TrainArgs, RewardArgs):
    """Supervised fine-tuning: next-token loss on the completion only."""

    command: typing.ClassVar[str] = "sft"

    batch_size: int = setting(128, "sequences per micro-batch per device")
    max_steps: int = setting(2000, "optimizer steps")
    reward: str | None = setting(None, "reward that scores greedy completions of the held-out prompts (accuracy for "
                                 "verifiers, mean reward otherwise); default: the task's reward (verifier for the "
                                 "arithmetic tasks), else exact-match when the rows have an answer column")
    completion_only_loss: bool = setting(True, "put the loss on completion tokens only (not the prompt)")
    eval_max_new_tokens: int = setting(64, "tokens generated per held-out prompt when scoring the model")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if problems:
            raise ConfigError(problems)


def validate_train_args(cfg: Any) -> list[str]:
    """Problems with the fields shared by every training config, and every choice field (empty list: fine)."""
    problems = choice_problems(cfg)
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
    if getattr(cfg, "overwrite", False) and getattr(cfg, "force_resume", False):
        problems.append("overwrite (start over) and force_resume (continue) contradict each other; pass one")
    if getattr(cfg, "force_resume", False) and not getattr(cfg, "resume", True):
        problems.append("force_resume asks to resume, resume=False not to; pass one")
    if not 0 <= getattr(cfg, "max_failure_rate", 0) <= 1:  # RL and DPO
        problems.append(f"max_failure_rate must be in [0, 1], got {cfg.max_failure_rate}")
    template = getattr(cfg, "chat_template", None)
    if template is not None and not Path(template).expanduser().is_file():
        problems.append(f"chat_template {template!r} is not a file; give the path of a Jinja template")
    if not str(getattr(cfg, "lora_target_modules", "x")).strip(" ,"):
        problems.append("lora_target_modules is empty; give all-linear or module names (q_proj,v_proj)")
    if getattr(cfg, "max_time", None) is not None:
        try:
            parse_duration(cfg.max_time)
        except ValueError as exc:
            problems.append(f"max_time: {exc}")
    return problems



def choice_problems(cfg: Any) -> list[str]:
    """``name must be one of a, b, got 'x'`` for every ``Literal`` field of ``cfg`` holding another value.

    The choices live in the field's type (shown in ``--help``, checked when flags and YAML are read); this
    checks a config built in Python too.
    """
    problems = []
    for name, annotation in _field_types(type(cfg)).items():
        if typing.get_origin(annotation) is Literal and getattr(cfg, name) not in typing.get_args(annotation):
            choices = ", ".join(map(str, typing.get_args(annotation)))
            problems.append(f"{name} must be one of {choices}, got {getattr(cfg, name)!r}")
    return problems

_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``90.5``, ``90s``, ``10m``, ``1h30m`` or ``2h``; a ValueError that says the format.

    Example:
        >>> parse_duration("1h30m"), parse_duration("45"), parse_duration(12.5)
        (5400.0, 45.0, 12.5)
    """
    import re

    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", raw)
        if not parts or "".join(n + u for n, u in parts) != raw.replace(" ", ""):
            raise ValueError(f"{text!r} is not a duration; give seconds (90) or units h/m/s (90s, 10m, 1h30m)")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be a positive duration")
    return seconds


# ------------------------------------------------------------------------------------------------------------
# dataclass <-> argparse / YAML
# ------------------------------------------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, *classes: type) -> None:
    """Add one flag per dataclass field; defaults are shown in --help but not injected (so YAML can win).

    With several classes (``train``: RLConfig and DPOConfig), the union of their fields becomes flags; a field
    shared by several is described by the first class, with each other class's default where it differs, and
    a field only some classes have says which; the chosen class later rejects flags it lacks.
    """
    from rewardhub.trl_names import _add_alias_flag, _alias_annotation, aliases_of

    seen: set[str] = set()
    for cls in classes:
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            others = [(c, {g.name: g for g in dataclasses.fields(c)}.get(f.name)) for c in classes if c is not cls]
            notes = [f"{c.__name__}: {_default_of(g)!r}" for c, g in others
                     if g is not None and _default_of(g) != _default_of(f)]
            if cls is not classes[0] or any(g is None for _, g in others):
                notes.append(f"{cls.__name__} only" if len(classes) > 1 and cls is not classes[0] else
                             f"not {', '.join(c.__name__ for c, g in others if g is None)}")
            _add_field_flag(parser, f, types[f.name], note=f" [{'; '.join(notes)}]" if notes else "",
                            required=f.name in getattr(cls, "required", ()))
    # TRL's names as hidden flags (--learning-rate for --lr): --help keeps one line per option, the epilog
    # says they exist, the README lists them; a name that is a field of any of the classes is that field's flag
    aliased = False
    for cls in classes:
        for name, alias in aliases_of(cls).items():
            if name not in seen:
                seen.add(name)
                aliased = True
                _add_alias_flag(parser, name, _alias_annotation(cls, alias))
    if aliased:
        note = ("TRL's names for these options are accepted too, as YAML keys and as flags (e.g. --learning-rate "
                "for --lr, --per-device-train-batch-size for --batch-size); see the README's \"TRL option names\".")
        parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML file whose keys are these options (flags given here override it)")


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _add_field_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, annotation: Any, note: str = "",
                    required: bool = False) -> None:
    """One field's flag. Field metadata: ``flag`` (another name), ``short`` (e.g. ``-o``), ``positional``."""
    if f.metadata.get("positional"):
        parser.add_argument(f.name, metavar=f.name.upper(), help=f.metadata.get("help", ""))
        return
    shown = "required" if required else f"default: {f.metadata.get('shown_default') or repr(_default_of(f))}"
    help_text = f"{f.metadata.get('help', '')} ({shown}){note}"
    names = [*([f.metadata["short"]] if "short" in f.metadata else []), flag_of(f)]
    if annotation is dict:
        parser.add_argument(*names, dest=f.name, action="append", metavar="KEY=VALUE",
                            default=argparse.SUPPRESS, help=help_text)
    elif annotation is list:
        parser.add_argument(*names, dest=f.name, action="append", metavar=f.name.upper().rstrip("S"),
                            default=argparse.SUPPRESS, help=help_text)
    elif annotation is bool:
        parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                            default=argparse.SUPPRESS, help=help_text)
    else:
        if typing.get_origin(annotation) is Literal:  # the choices, as argparse shows them
            metavar = "{" + ",".join(map(str, typing.get_args(annotation))) + "}"
        else:
            metavar = type_name(annotation).upper().replace(" ", "")
        parser.add_argument(*names, dest=f.name, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


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


def build_config(cls: type, values: Mapping[str, Any], source: str = "config",
                 given_as: Mapping[str, str] | None = None):
    """Instantiate ``cls`` from raw values (strings from flags or YAML scalars), reporting all problems at once.

    TRL's names (:data:`rewardhub.trl_names.TRL_ALIASES`) are accepted for the options they mean; ``given_as`` maps
    an option to the alias it was given as when the caller resolved them already (:func:`load_config`), for the
    messages.
    """
    from rewardhub.trl_names import aliases_of, resolve_aliases

    types = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    given_as = dict(given_as or {})
    values = resolve_aliases(cls, values, values.get("algo", getattr(cls, "algo", None)), source, problems,
                             given_as)
    for key, raw in values.items():
        if key not in names:
            close = [n for n in (*names, *aliases_of(cls)) if n.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            problems.append(f"unknown option {key!r} in {source}{hint}")
            continue
        annotation = types[key]
        try:
            if annotation is dict and isinstance(raw, list):
                raw = parse_key_values(raw, f"--{key.replace('_', '-')}")
            kwargs[key] = coerce(raw, annotation)
        except (ValueError, ConfigError) as exc:
            alias = f" (given as TRL's {given_as[key]!r})" if key in given_as else ""
            problems.append(f"option {key!r}{alias}: {exc} (expected {type_name(annotation)})")
    if problems:
        raise ConfigError(problems)
    cfg = cls(**kwargs)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def load_config(cls: type, args: argparse.Namespace, presets: Mapping[str, Mapping[str, Any]] | None = None):
    """defaults < preset of the chosen model < YAML ``--config`` < explicit flags -> a validated ``cls``.

    ``presets`` maps a model name to defaults that suit it (e.g. the built-in tiny model needs a larger
    learning rate than a 7B model); they apply only to options neither the YAML nor a flag sets.
    """
    from rewardhub.trl_names import resolve_aliases

    explicit = dict(vars(args))
    explicit.pop("command", None)
    explicit.pop("handler", None)
    yaml_path = explicit.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    from_yaml = read_yaml(yaml_path) if yaml_path else {}
    # TRL's names become ours per layer (an alias and its own name both in the YAML, or both as flags, is an
    # error; a flag still overrides the YAML whichever name each uses), before the preset fills in the rest
    model = _given(cls, (explicit, from_yaml), "model", getattr(cls, "model", None))
    preset = dict((presets or {}).get(model) or {})
    algo = _given(cls, (explicit, from_yaml), "algo", preset.get("algo", getattr(cls, "algo", None)))
    problems: list[str] = []
    given_as: dict[str, str] = {}
    values = resolve_aliases(cls, from_yaml, algo, str(yaml_path), problems, given_as)
    flags = resolve_aliases(cls, explicit, algo, "the flags", problems, given_as)
    if problems:
        raise ConfigError(problems)
    for key in flags:  # a flag under its own name overrides the YAML's alias of it
        if key in explicit:
            given_as.pop(key, None)
    values.update(flags)  # a flag the chosen config lacks is reported by build_config, never ignored
    if "data_args" in preset:
        if "data" in values:  # the user's own data: the preset's options for its data do not apply
            preset.pop("data_args")
        elif "data_args" in values:  # the preset's data with some options changed: the user's win
            given = values["data_args"]
            given = parse_key_values(given, "--data-arg") if isinstance(given, list) else dict(given or {})
            values["data_args"] = {**preset.pop("data_args"), **given}
    for key, value in preset.items():
        if key in names:
            values.setdefault(key, value)
    where = f"{yaml_path} or the flags" if yaml_path else "the flags"
    return build_config(cls, values, source=f"{where} ({cls.__name__} has no such field)", given_as=given_as)


@dataclass
class TrainConfig(ModelArgs, DataArgs, TrainArgs, RewardArgs):
    """Reward-driven training: the algorithm plus the reward source."""

    algo: Literal["ppo", "grpo", "rloo", "dpo"] = setting("ppo", "training algorithm")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if problems:
            raise ConfigError(problems)


@dataclass
class RLConfig(TrainConfig):
    """On-policy RL against a reward provider: PPO (value head, GAE), GRPO or RLOO (critic-free).

    One step = ``batch_size`` prompts, each sampled ``num_generations`` times, scored once by the provider,
    then ``ppo_epochs`` passes of minibatch updates over that rollout.
    """

    algo: RLAlgo = setting("ppo", "training algorithm")
    batch_size: int = setting(8, "prompts per step per device (each sampled num_generations times)")
    num_generations: int = setting(0, "completions per prompt, laid out as consecutive groups "
                                   "(0: auto = 1 for ppo, 4 for grpo/rloo; grpo/rloo need >= 2)")
    max_new_tokens: int = setting(32, "longest completion sampled, in tokens")
    temperature: float = setting(1.0, "sampling temperature (> 0); log-probs are computed from logits / temperature")
    top_p: float = setting(1.0, "nucleus sampling mass in (0, 1] (1 disables it)")
    top_k: int = setting(0, "sample among the k most likely tokens (0 disables it)")
    minibatch_size: int = setting(0, "sequences per optimizer step within a rollout (0: the whole rollout)")
    ppo_epochs: int = setting(1, "passes over each rollout (PPO/GRPO iterations per batch)")
    clip_eps: float = setting(0.2, "PPO policy clip range (ratio kept in [1 - eps, 1 + eps_high])")
    clip_eps_high: float | None = setting(None, "upper clip range (DAPO clip-higher); none: same as clip_eps")
    target_kl: float | None = setting(None, "stop the epoch loop of a step once the approximate KL between the "
                                      "updated and the rollout policy exceeds this (none: never)")
    critic: Literal["policy-head", "separate"] = setting("policy-head", "ppo value function: a head on the policy, or "
                                                         "a separate critic trunk")
    vf_coef: float = setting(0.1, "weight of the value loss (ppo)")
    value_lr_mult: float = setting(1.0, "learning rate of the value head = lr x this (ppo); a zero-initialised "
                                   "head at a policy-sized lr barely fits within a short run, so GAE gets no baseline")
    clip_value: float | None = setting(0.2, "value-loss clip range around the rollout-time values (none: unclipped)")
    gamma: float = setting(1.0, "GAE discount (1: no discount within a response, InstructGPT/ReFT)")
    lam: float = setting(0.95, "GAE lambda (0.95: InstructGPT/ReFT/TRL; 1: OpenRLHF/verl)")
    whiten_rewards: bool = setting(False, "rescale rewards to unit variance over the batch, mean kept (ppo: "
                                   "per-token rewards as in TRL; grpo/rloo: sequence rewards)")
    whiten_advantages: bool = setting(True, "whiten ppo advantages over the batch (grpo/rloo advantages are "
                                      "already group-relative)")
    scale_rewards: bool = setting(True, "grpo: divide by the group std (false: Dr. GRPO, mean-centred only)")
    kl_coef: float = setting(0.05, "beta: weight of the KL-to-reference penalty in the reward (initial value "
                             "when adaptive_kl)")
    kl_estimator: KLEstimator = setting("k1", "per-token KL estimator (Schulman's k1, k2, k3)")
    kl_in_reward: bool = setting(True, "subtract beta * KL from the reward (false: no KL in the reward)")
    kl_loss_coef: float = setting(0.0, "weight of a k3 KL-to-reference term in the loss (GRPO/DeepSeekMath style)")
    adaptive_kl: bool = setting(False, "adapt beta toward kl_target (Ziegler et al.) instead of keeping it fixed")
    kl_target: float = setting(6.0, "adaptive KL: target KL per sequence, in nats")
    kl_horizon: float = setting(10000.0, "adaptive KL: horizon in samples")
    missing_eos_penalty: float | None = setting(None, "subtracted from the score of completions that never emit "
                                                "EOS (TRL semantics; none: no penalty)")
    max_failure_rate: float = setting(0.5, "stop the run when the share of samples whose reward failed "
                                      "(timeout/error/pending) in one step exceeds this")
    completions_every: int = setting(10, "write out/completions/step_XXXXX.jsonl every N steps (0: never)")
    lr: float = setting(1e-5, "peak learning rate (AdamW)")
    loss_agg: LossAgg = setting("token-mean", "how per-token losses add up (verl's loss_agg_mode)")
    skip_zero_advantage: bool = setting(True, "skip the passes of rows whose loss is exactly zero (same gradient)")
    recompute_logprobs: bool = setting(False, "recompute old log-probs instead of reusing the sampler's")
    generation_server: str | None = setting(None, "sample rollouts on this OpenAI-compatible server (vLLM, SGLang, "
                                            "rewardhub serve), e.g. http://127.0.0.1:8000/v1 (none: in-process)")
    generation_model: str | None = setting(None, "model name sent to --generation-server (none: the first one its "
                                           "/v1/models lists)")
    generation_api_key: str | None = setting(None, "bearer token for --generation-server (none: $OPENAI_API_KEY if "
                                             "set; prefer it: options are written to OUT/run.json)")
    generation_sync: Literal["auto", "lora", "full", "none"] = setting(
        "auto", "how weights reach --generation-server after each update: lora (adapter via /v1/load_lora_adapter), "
        "full (weights via /v1/update_weights, or /update_weights_from_disk with --generation-sync-dir), auto (lora "
        "when lora_r > 0, else full), none (the server keeps its own)")
    generation_sync_dir: str | None = setting(None, "a directory --generation-server can read, for LoRA adapters "
                                              "(default OUT/weight_sync) and, when set, full weights (SGLang's "
                                              "/update_weights_from_disk)")
    generation_logprobs: Literal["auto", "server", "recompute"] = setting(
        "auto", "old log-probs from --generation-server (server), from a trainer forward pass (recompute), or auto: "
        "the server's when it is rewardhub serve, else recomputed (vLLM's differ unless temperature 1 and no "
        "top-k/top-p)")
    generation_timeout: float = setting(600.0, "seconds one request to --generation-server may take")
    generation_concurrency: int = setting(16, "requests to --generation-server in flight at once (one per prompt)")
    async_rollouts: bool = setting(False, "pipelined RL: sample the next step's rollout in a background worker, "
                                   "with its own weight copy, while this step scores and updates")
    max_staleness: int = setting(1, "async_rollouts: a rollout comes from weights at most N updates old "
                                 "(0: never stale, the synchronous loop's result)")
    sft_warmup_steps: int = setting(0, "SFT steps on --data (rows with completions) before RL, the ReFT warm-up; "
                                    "the policy then starts from OUT/sft-warmup/model, and --max-steps counts RL steps")

    @property
    def generations(self) -> int:
        """``num_generations`` with ``0`` resolved per algorithm."""
        return self.num_generations or (1 if self.algo == "ppo" else 4)

    def validate(self) -> None:
        problems = validate_train_args(self)
        problems += _rl_problems(self)
        if problems:
            raise ConfigError(problems)


#: Defaults for the built-in tiny model: the default job, ReFT as a demonstration. The built-in
#: chain-of-thought task with an imperfect teacher (it drops the carry in 60% of the steps that have one, so
#: about half its demonstrations end wrong), a warm-up long enough that every seed learns the format, then RL
#: against the verifier on the same questions. Measured in the README ("ReFT"). Applied by :func:`load_config`
#: (``rewardhub train``); any flag or YAML key overrides them; the preset's data options go with its data
#: (``--data X`` drops them).
RL_PRESETS = {BUILTIN_TINY: {
    "data": "arithmetic-cot", "data_args": {"teacher_error": 0.6}, "algo": "grpo",
    "sft_warmup_steps": 1000, "max_new_tokens": 32, "batch_size": 32, "num_generations": 8, "max_steps": 200,
    "temperature": 0.7, "lr": 1e-4, "warmup_ratio": 0.1, "kl_coef": 0.0, "eval_size": 500,
}}


def _rl_problems(cfg: RLConfig) -> list[str]:
    p = []
    for name in ("max_new_tokens", "ppo_epochs"):
        if getattr(cfg, name) < 1:
            p.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("num_generations", "minibatch_size", "top_k", "completions_every", "vf_coef", "kl_coef",
                 "kl_loss_coef", "sft_warmup_steps", "value_lr_mult"):
        if getattr(cfg, name) < 0:
            p.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.algo in ("grpo", "rloo") and cfg.generations < 2:
        p.append(f"--algo {cfg.algo} needs num_generations >= 2 (a group baseline), got {cfg.num_generations}")
    if not cfg.temperature > 0:
        p.append(f"temperature must be > 0 for RL sampling, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        p.append(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.clip_eps <= 0 or (cfg.clip_eps_high is not None and cfg.clip_eps_high <= 0):
        p.append(f"clip_eps and clip_eps_high must be > 0, got {cfg.clip_eps} and {cfg.clip_eps_high}")
    if cfg.clip_value is not None and cfg.clip_value <= 0:
        p.append(f"clip_value must be > 0 or none, got {cfg.clip_value}")
    if cfg.target_kl is not None and cfg.target_kl <= 0:
        p.append(f"target_kl must be > 0 or none, got {cfg.target_kl}")
    if not 0 <= cfg.gamma <= 1 or not 0 <= cfg.lam <= 1:
        p.append(f"gamma and lam must be in [0, 1], got {cfg.gamma} and {cfg.lam}")
    if cfg.adaptive_kl and (cfg.kl_target <= 0 or cfg.kl_horizon <= 0):
        p.append(f"adaptive_kl needs kl_target > 0 and kl_horizon > 0, got {cfg.kl_target} and {cfg.kl_horizon}")
    if cfg.minibatch_size and cfg.minibatch_size < cfg.grad_accum:
        p.append(f"minibatch_size ({cfg.minibatch_size}) must be >= grad_accum ({cfg.grad_accum})")
    if isinstance(cfg.max_staleness, bool) or not isinstance(cfg.max_staleness, int) or cfg.max_staleness < 0:
        p.append(f"max_staleness must be an int >= 0 (updates a rollout's weights may lag), got {cfg.max_staleness!r}")
    if cfg.async_rollouts and cfg.recompute_logprobs:
        p.append("async_rollouts with recompute_logprobs: the recomputed log-probs would be the trainer's current "
                 "weights', not the behaviour policy's that sampled the rollout (the PPO ratio needs those); drop one")
    if cfg.async_rollouts and cfg.generation_logprobs == "recompute":
        p.append("async_rollouts with generation_logprobs=recompute: the PPO ratio needs the behaviour policy's "
                 "log-probs, which only the server that sampled has; use generation_logprobs=server (or auto)")
    return p + _generation_server_problems(cfg)


def _generation_server_problems(cfg: RLConfig) -> list[str]:
    """The ``generation_*`` options: a URL that can be one, and no server option without a server."""
    p = []
    url = cfg.generation_server
    if url is not None and not str(url).strip().startswith(("http://", "https://")):
        p.append(f"generation_server must be an http:// or https:// URL (e.g. http://127.0.0.1:8000/v1), got {url!r}")
    if not cfg.generation_timeout > 0:
        p.append(f"generation_timeout must be > 0 seconds, got {cfg.generation_timeout}")
    if cfg.generation_concurrency < 1:
        p.append(f"generation_concurrency must be >= 1, got {cfg.generation_concurrency}")
    if url is None:
        given = [n for n in ("generation_model", "generation_api_key", "generation_sync_dir") if getattr(cfg, n)]
        given += [n for n, default in (("generation_sync", "auto"), ("generation_logprobs", "auto"))
                  if getattr(cfg, n) != default]
        if given:
            p.append(f"{', '.join(given)} set without generation_server; give the server's URL "
                     "(--generation-server http://HOST:PORT/v1) or drop them")
    elif cfg.generation_sync == "lora" and cfg.lora_r == 0:
        p.append("generation_sync=lora needs a LoRA policy: set lora_r > 0 (or generation_sync auto/full)")
    elif cfg.generation_sync == "full" and cfg.lora_r > 0:
        p.append("generation_sync=full with lora_r > 0 would send the base weights without the adapter; use "
                 "generation_sync=lora (or auto)")
    return p




@dataclass
class DPOConfig(TrainConfig):
    """DPO: preference pairs from a dataset, from a provider's stored preferences, or sampled online and
    ranked by any provider; the policy learns from them against a frozen reference (no reward model)."""

    algo: Literal["dpo"] = setting("dpo", "training algorithm")
    data: str = setting("arithmetic-preferences", "pairs (prompt/chosen/rejected columns, or chosen/rejected with "
                        "an implicit prompt) or, for --pairs online, prompts: a task, a .jsonl/.json/.parquet/.csv "
                        "file, a directory, or a hub dataset id")
    pairs: Literal["auto", "dataset", "provider", "online"] = setting("auto", "where preference pairs come from")
    reward: str | None = setting(None, "reward that ranks online samples, stores pairs (--pairs online/provider) and "
                                 "scores the held-out prompts; default: the task's reward, else exact-match")
    beta: float = setting(0.1, "DPO beta: strength of the implicit KL regularisation (IPO: its tau)")
    loss_type: DPOLoss = setting("sigmoid", "DPO loss (ipo uses length-normalised log-probs)")
    label_smoothing: float = setting(0.0, "assumed label-flip rate for sigmoid (cDPO) and robust losses")
    rpo_alpha: float = setting(0.0, "weight of the chosen replies' per-token NLL added to the loss (RPO; TRL's "
                               "rpo_alpha); keeps the chosen likelihood from falling with the rejected one")
    precompute_ref: bool = setting(True, "compute reference log-probs of offline pairs once before training (no "
                                   "reference model kept in memory); false: a frozen reference scores each batch")
    batch_size: int = setting(8, "pairs per micro-batch per device (online: prompts per micro-batch)")
    lr: float = setting(1e-5, "peak learning rate (AdamW)")
    num_generations: int = setting(4, "online: completions sampled per prompt (best vs worst form one pair)")
    rank_with: Literal["score", "compare"] = setting("score", "online: rank samples by score() or pairwise compare()")
    max_new_tokens: int = setting(32, "online: longest completion sampled, in tokens")
    temperature: float = setting(1.0, "online: sampling temperature (> 0)")
    top_p: float = setting(1.0, "online: nucleus sampling mass in (0, 1]")
    top_k: int = setting(0, "online: sample among the k most likely tokens (0 disables it)")
    eval_max_new_tokens: int = setting(16, "online: tokens generated per held-out prompt when scoring the policy")
    max_failure_rate: float = setting(0.5, "stop the run when the share of samples whose reward failed "
                                      "(timeout/error/pending) in one step exceeds this")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if self.algo != "dpo":
            problems.append(f"DPOConfig is for algo dpo, got {self.algo!r}")
        problems += _dpo_problems(self)
        if problems:
            raise ConfigError(problems)


def _dpo_problems(cfg: DPOConfig) -> list[str]:
    p = []
    if not cfg.beta > 0:
        p.append(f"beta must be > 0, got {cfg.beta}")
    if cfg.rpo_alpha < 0:
        p.append(f"rpo_alpha must be >= 0, got {cfg.rpo_alpha}")
    if cfg.loss_type in ("hinge", "ipo") and cfg.label_smoothing:
        p.append(f"label_smoothing is not defined for loss_type {cfg.loss_type}; leave it at 0")
    elif not 0 <= cfg.label_smoothing < 0.5 and not (cfg.loss_type == "sigmoid" and cfg.label_smoothing == 0.5):
        p.append(f"label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.num_generations < 2:
        p.append(f"num_generations must be >= 2 (a best and a worst sample), got {cfg.num_generations}")
    for name in ("max_new_tokens", "eval_max_new_tokens"):
        if getattr(cfg, name) < 1:
            p.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.temperature > 0:
        p.append(f"temperature must be > 0 for online sampling, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        p.append(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        p.append(f"top_k must be >= 0, got {cfg.top_k}")
    return p


@dataclass
class RewardModelConfig(ModelArgs, DataArgs, TrainArgs):
    """Bradley-Terry reward model: a one-output sequence classifier trained on prompt/chosen/rejected pairs."""

    command: typing.ClassVar[str] = "reward-model"

    data: str = setting("arithmetic-preferences", "pairs with prompt/chosen/rejected columns, or chosen/rejected "
                        "with an implicit prompt (optional margin): a task, a .jsonl/.json/.parquet/.csv file, a "
                        "directory, or a hub dataset id")
    lr: float = setting(1e-4, "peak learning rate (AdamW)")
    batch_size: int = setting(32, "pairs per micro-batch per device")
    center_coef: float = setting(0.0, "weight of the reward-centring term center_coef * mean((r_c + r_r)^2) (0: off)")
    use_margin: bool = setting(True, "use the data's `margin` column when present: -log sigmoid(r_c - r_r - margin)")
    calibration_data: str | None = setting(None, "pairs whose chosen+rejected scores give the mean/std stored for "
                                           "normalisation (default: the training pairs)")
    calibration_size: int = setting(1000, "pairs used for the calibration statistics (0: all)")

    def validate(self) -> None:
        problems = validate_train_args(self)
        if self.center_coef < 0:
            problems.append(f"center_coef must be >= 0, got {self.center_coef}")
        if self.calibration_size < 0:
            problems.append(f"calibration_size must be >= 0, got {self.calibration_size}")
        if problems:
            raise ConfigError(problems)


# ------------------------------------------------------------------------------------------------------------
# scoring without training: `rewardhub score` and `rewardhub eval`
# ------------------------------------------------------------------------------------------------------------

@dataclass
class ScoringArgs(RewardArgs):
    """The reward flags of the commands that only score: there is no task default, so ``--reward`` is required."""

    required: typing.ClassVar[tuple[str, ...]] = ("reward",)

    reward: str | None = setting(None, "reward: a registered name, a weighted mix (verifier=1.0,length=0.1) or "
                                 "module:attr / file.py:attr")
    column_map: dict = setting({}, "rename columns as src=dst, repeatable (e.g. question=prompt)")

    def validate(self) -> None:
        problems = [f"--{name.replace('_', '-')} is required" for name in self.required if not getattr(self, name)]
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name, 1) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if getattr(self, "limit", 0) < 0:
            problems.append(f"limit must be >= 0, got {self.limit}")
        if problems:
            raise ConfigError(problems)


@dataclass
class ScoreConfig(ScoringArgs):
    """``rewardhub score``: the ``completion`` column of existing data, scored with a reward (no model)."""

    required: typing.ClassVar[tuple[str, ...]] = ("reward", "data")

    data: str | None = setting(None, "file, directory, task or hub id with a `completion` column")
    split: str = setting("train", "split to score when the data has several")
    batch_size: int = setting(256, "samples per provider call")
    output: str = setting("scores.jsonl", "where to write per-row results")


@dataclass
class EvalConfig(ScoringArgs):
    """``rewardhub eval``: a completion generated for each prompt (greedy by default), scored with a reward."""

    model: str = setting(BUILTIN_TINY, "model path or id")
    data: str = setting("arithmetic:test", "prompts: task, file, directory or hub id")
    data_args: dict = setting({}, "task option as key=value, repeatable", flag="--data-arg")
    limit: int = setting(200, "evaluate the first N rows (0: all)")
    max_new_tokens: int = setting(32, "tokens generated per prompt")
    temperature: float = setting(0.0, "sampling temperature; 0 for greedy")
    batch_size: int = setting(64, "prompts per generation batch")
    seed: int = setting(0, "sampling seed")
    output: str = setting("eval.jsonl", "where to write per-row results")


def _given(cls: type, layers: Sequence[Mapping[str, Any]], name: str, default: Any) -> Any:
    """The value of option ``name`` in the first layer that gives it, under its own name or a TRL alias."""
    from rewardhub.trl_names import aliases_of

    names = [name, *(a for a, alias in aliases_of(cls).items() if alias.target == name)]
    for layer in layers:
        for n in names:
            if n in layer:
                return layer[n]
    return default
