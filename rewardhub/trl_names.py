"""TRL's option names as aliases of ours (YAML keys and flags), and the README table of them.

A TRL user's config names the same settings differently (``learning_rate`` for ``lr``); :data:`TRL_ALIASES`
maps each name whose meaning matches exactly, and says why for each one whose meaning differs. The config
machinery (:func:`rewardhub.config.build_config`, :func:`~rewardhub.config.load_config`,
:func:`~rewardhub.config.add_flags`) resolves them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rewardhub.config import (
    DataArgs,
    DPOConfig,
    ModelArgs,
    RewardModelConfig,
    RLConfig,
    SFTConfig,
    TrainArgs,
    _field_types,
)


@dataclass(frozen=True)
class Alias:
    """A TRL (or transformers ``TrainingArguments``) name for one of our options, or why it is none.

    Args:
        target: our field of the same meaning; None when there is no equivalent (``error`` says what to use).
        by_algo: the target per ``algo`` when TRL's meaning depends on the trainer (``beta``); an algo not listed
            is an error.
        values: TRL's value -> ours, when the names of the values differ; any other value is an error.
        error: why this TRL name is no alias here and what to use (no target, an unlisted algo or value).
        note: a difference worth knowing although the meaning matches (shown in the README table).
    """

    target: str | None = None
    by_algo: Mapping[str, str] | None = None
    values: Mapping[str, str] | None = None
    error: str = ""
    note: str = ""

    def target_for(self, algo: str | None) -> str | None:
        return self.by_algo.get(str(algo)) if self.by_algo is not None else self.target


_NO_EPOCHS = ("rewardhub counts optimizer steps, not epochs: set max_steps (a step takes batch_size x grad_accum "
              "rows per process; RL: batch_size prompts)")
_NO_MIXED_PRECISION = ("TRL's {name} is mixed precision (float32 weights, {dtype} autocast); rewardhub has no mixed "
                       "precision: dtype sets the parameter dtype (dtype: {dtype} trains the weights in {dtype})")

_VLLM_SERVER = ("TRL's {name} has no equivalent: rewardhub has no colocated vLLM, and one option selects a server: "
                "generation_server (TRL's vllm_server_base_url) = its whole URL, e.g. http://127.0.0.1:8000/v1")

#: TRL's names for our options, per config class (a class has the aliases of its bases too, its own winning).
#: Only names that mean the same thing here are aliases; a TRL name whose meaning differs is an error that says
#: so and what to use; any other unknown key stays an "unknown option" error. Our own field names always win:
#: ``beta`` is DPOConfig's own field, and an alias only for RLConfig.
TRL_ALIASES: dict[type, dict[str, Alias]] = {
    TrainArgs: {
        "learning_rate": Alias("lr"),
        "per_device_train_batch_size": Alias("batch_size"),
        "gradient_accumulation_steps": Alias("grad_accum"),
        "output_dir": Alias("out"),
        "logging_steps": Alias("log_every", note="an integer here (TRL also takes a ratio of the steps)"),
        "save_steps": Alias("save_every", note="an integer here (TRL also takes a ratio of the steps)"),
        "eval_steps": Alias("eval_every", note="an integer here; evaluation runs whenever there is held-out data"),
        "lr_scheduler_type": Alias("lr_scheduler"),
        "save_total_limit": Alias("keep_checkpoints"),
        "num_train_epochs": Alias(error=_NO_EPOCHS),
        "warmup_steps": Alias(error="rewardhub takes warmup_ratio, the share of max_steps spent warming up: "
                                    "warmup_ratio = warmup_steps / max_steps"),
        "bf16": Alias(error=_NO_MIXED_PRECISION.format(name="bf16", dtype="bfloat16")),
        "fp16": Alias(error=_NO_MIXED_PRECISION.format(name="fp16", dtype="float16")),
        "resume_from_checkpoint": Alias(error="rewardhub resumes the run in out from its newest checkpoint by "
                                              "itself (resume: true, the default): set out to the run directory"),
    },
    ModelArgs: {
        "model_name_or_path": Alias("model"),
        "torch_dtype": Alias("dtype"),
    },
    DataArgs: {
        "dataset_name": Alias("data"),
        "max_prompt_length": Alias(error="rewardhub has no prompt limit of its own: max_length bounds prompt + "
                                         "completion and the prompt is cut from the left to fit (RL: to max_length - "
                                         "max_new_tokens); set max_length = max_prompt_length + the completion "
                                         "length"),
    },
    SFTConfig: {
        "max_seq_length": Alias("max_length", note="TRL's older name; the prompt is cut from the left here, "
                                                   "TRL truncates the end"),
    },
    RLConfig: {
        "per_device_train_batch_size": Alias(
            error="TRL's GRPO counts completions per device per micro-batch; rewardhub's batch_size counts prompts "
                  "per step per device, each sampled num_generations times: batch_size = "
                  "per_device_train_batch_size x gradient_accumulation_steps / num_generations"),
        "max_completion_length": Alias("max_new_tokens"),
        "response_length": Alias("max_new_tokens", note="TRL's PPO name"),
        "epsilon": Alias("clip_eps"),
        "epsilon_high": Alias("clip_eps_high"),
        "cliprange": Alias("clip_eps", note="TRL's PPO name"),
        "cliprange_value": Alias("clip_value", note="TRL's PPO name"),
        "num_iterations": Alias("ppo_epochs"),
        "num_ppo_epochs": Alias("ppo_epochs", note="TRL's PPO name"),
        "beta": Alias(
            by_algo={"grpo": "kl_loss_coef", "rloo": "kl_coef"},
            error="beta is the KL coefficient of TRL's GRPO (here kl_loss_coef: k3 KL in the loss) and RLOO (here "
                  "kl_coef: KL in the reward); for ppo, TRL and rewardhub both call it kl_coef",
            note="grpo: TRL's k3 KL in the loss; rewardhub's KL in the reward (kl_coef, default 0.05) still "
                 "applies, set kl_coef: 0 for TRL's GRPO exactly. rloo: KL in the reward (kl_estimator k1)"),
        "vllm_server_base_url": Alias(
            "generation_server", note="an OpenAI-compatible server (`vllm serve`, SGLang, `rewardhub serve`), not "
            "`trl vllm-serve` (its NCCL weight transfer is not spoken); /v1 is added when missing"),
        "use_vllm": Alias(error=_VLLM_SERVER.format(name="use_vllm")),
        "vllm_mode": Alias(error=_VLLM_SERVER.format(name="vllm_mode")),
        "vllm_server_host": Alias(error=_VLLM_SERVER.format(name="vllm_server_host")),
        "vllm_server_port": Alias(error=_VLLM_SERVER.format(name="vllm_server_port")),
        "vllm_server_timeout": Alias(
            error="TRL's vllm_server_timeout is how long to wait for the server to come up; rewardhub needs it up at "
                  "the first rollout, and generation_timeout bounds each request"),
        "loss_type": Alias(
            "loss_agg", values={"dapo": "token-mean", "grpo": "seq-mean-token-mean",
                                "dr_grpo": "seq-mean-token-sum-norm"},
            error="TRL's GRPO loss_type dapo, grpo and dr_grpo are loss_agg token-mean, seq-mean-token-mean and "
                  "seq-mean-token-sum-norm here; bnpo (a per-process normaliser), cispo, sapo, luspo and vespo "
                  "(other losses) have no equivalent"),
    },
    DPOConfig: {
        "precompute_ref_log_probs": Alias("precompute_ref", note="default true here, false in TRL"),
        "max_completion_length": Alias(
            error="TRL's DPO max_completion_length truncates the replies; rewardhub's max_length bounds prompt + "
                  "reply (reply cut from the right, prompt from the left); online, the sampled length is "
                  "max_new_tokens"),
    },
    RewardModelConfig: {
        "center_rewards_coefficient": Alias("center_coef"),
    },
}


def aliases_of(cls: type) -> dict[str, Alias]:
    """The TRL aliases ``cls`` accepts: those of its bases and its own, minus names that are its own fields."""
    merged: dict[str, Alias] = {}
    for base in reversed(cls.__mro__):
        merged.update(TRL_ALIASES.get(base, {}))
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {name: alias for name, alias in merged.items() if name not in fields}


def resolve_aliases(cls: type, values: Mapping[str, Any], algo: str | None, source: str,
                    problems: list[str], given_as: dict[str, str] | None = None) -> dict[str, Any]:
    """``values`` with TRL's names replaced by ours; a name without an equivalent, or an alias given together
    with its own name (or with another alias of it) in ``source``, is added to ``problems``.

    ``given_as`` (when passed) records ``our name -> the alias it was given as``, for messages.
    """
    aliases = aliases_of(cls)
    out = {k: v for k, v in values.items() if k not in aliases}
    set_by: dict[str, str] = {}
    for key, raw in values.items():
        alias = aliases.get(key)
        if alias is None:
            continue
        target = alias.target_for(algo)
        if target is None:
            where = f" with algo {algo}" if alias.by_algo is not None else ""
            problems.append(f"option {key!r} (TRL's name) has no equivalent{where} in {source}: {alias.error}")
            continue
        if alias.values is not None:
            if str(raw) not in alias.values:
                problems.append(f"option {key!r}: TRL's {key}={raw!r} in {source} has no equivalent: {alias.error}")
                continue
            raw = alias.values[str(raw)]
        if target in values or target in set_by:
            other = set_by.get(target, target)
            problems.append(f"both {other!r} and {key!r} (TRL's name for {target!r}) are given in {source}; "
                            "give one of them")
            continue
        out[target] = raw
        set_by[target] = key
    if given_as is not None:
        given_as.update({target: key for target, key in set_by.items()})
    return out


def _alias_annotation(cls: type, alias: Alias) -> Any:
    """The type an alias flag parses like: its target's, a string for value maps, None for an error."""
    target = alias.target or next(iter((alias.by_algo or {}).values()), None)
    if target is None:
        return None
    if alias.values is not None:
        return str
    return _field_types(cls).get(target, str)


def _add_alias_flag(parser: argparse.ArgumentParser, name: str, annotation: Any) -> None:
    """A hidden ``--trl-name`` flag: its value lands under the TRL name, which :func:`load_config` resolves."""
    flag = "--" + name.replace("_", "-")
    kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
    try:
        if annotation is None:  # no equivalent: `--bf16` alone or with a value, either way the explanation
            parser.add_argument(flag, nargs="?", const="true", **kw)
        elif annotation in (dict, list):
            parser.add_argument(flag, action="append", **kw)
        elif annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, **kw)
    except argparse.ArgumentError:  # the parser already has such a flag (a plugin's own): it wins
        pass


#: Where each training config is used, for the README table.
_ALIAS_CONFIGS = {SFTConfig: "sft", RLConfig: "train (ppo/grpo/rloo)", DPOConfig: "train --algo dpo",
                  RewardModelConfig: "train-rm"}


def trl_alias_table() -> str:
    """The README's table of TRL names: one row per name and meaning, with the commands it applies to."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for cls, where in _ALIAS_CONFIGS.items():
        for name, alias in sorted(aliases_of(cls).items()):
            if alias.by_algo is not None:
                ours = "; ".join(f"{algo}: `{t}`" for algo, t in alias.by_algo.items()) + "; else an error"
            elif alias.values is not None:
                ours = f"`{alias.target}`: " + ", ".join(f"{k} = {v}" for k, v in alias.values.items())
            elif alias.target is not None:
                ours = f"`{alias.target}`"
            else:
                ours = f"error: {alias.error}"
            rows.setdefault((name, ours, alias.note), []).append(where)
    lines = ["| TRL name | rewardhub | commands | note |", "| --- | --- | --- | --- |"]
    for (name, ours, note), wheres in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[1])):
        shown = "all training" if len(wheres) == len(_ALIAS_CONFIGS) else ", ".join(wheres)
        lines.append(f"| `{name}` | {ours} | {shown} | {note} |")
    return "\n".join(lines)
