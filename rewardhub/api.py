"""The Python API: each command as a function that takes paths or in-memory objects and returns a :class:`Result`.

::

    import rewardhub

    result = rewardhub.train(algo="grpo", reward="verifier", max_steps=50)  # the ReFT demonstration, shorter
    result.metrics["after/accuracy"], result.model_path

    rewardhub.sft(model=model, tokenizer=tokenizer, data=[{"prompt": "1+1=", "completion": "2"}], out="runs/mine")
    rewardhub.train(algo="grpo", reward=lambda completion, row: completion.strip() == row["answer"], data=ds)

Settings are the config fields (the flags' names with underscores: ``max_steps=50``, ``data_args={"digits": 3}``)
or ``config="run.yaml"``, validated exactly as the command line's, with the same defaults (the built-in model's
ReFT preset included). The commands call these functions, so the two cannot drift apart.

In-memory inputs of a training run are written once to a content-addressed cache (``$REWARDHUB_HOME/inputs``,
default ``~/.cache/rewardhub/inputs``) and the run reads them from there: ``run.json`` names a file whose name
is its content's hash, so a rerun with other rows is noticed, a resumed run reads the same rows, and
``accelerate launch`` processes all see them. A loaded model is saved there the same way (one
``save_pretrained``; for a large model, pass its path). ``evaluate`` uses in-memory objects as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError, DataError
from rewardhub.loop import Callback
from rewardhub.rewards import RewardProvider

#: what ``data=`` (and ``eval_data=``, ``calibration_data=``) may be besides a path or a data spec
InMemoryRows = Any  # datasets.Dataset | Sequence[Mapping] | Mapping[str, Sequence] (columns)
#: what ``reward=`` may be: a spec string, a provider instance, or a function
RewardLike = str | RewardProvider | Callable[..., Any]


@dataclass
class Result:
    """What a run produced: its final metrics and where its files are.

    Attributes:
        metrics: the final metrics the command prints (``after/accuracy``, ``train/loss``, ``model_path``, ...).
        out: the run directory (None for ``evaluate``).
        rows: ``evaluate`` only: one dict per prompt (prompt, completion, reward, status, detail).
    """

    metrics: dict[str, Any]
    out: Path | None = None
    rows: list[dict[str, Any]] | None = None

    @property
    def model_path(self) -> Path | None:
        path = self.metrics.get("model_path")
        return Path(path) if path else None

    @property
    def metrics_path(self) -> Path | None:
        return self.out / "metrics.jsonl" if self.out else None

    def history(self, kind: str = "train") -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` of one ``kind`` (``train`` or ``eval``), in step order."""
        if self.metrics_path is None or not self.metrics_path.exists():
            return []
        rows = (json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line)
        return [r for r in rows if r.get("kind") == kind]


# ------------------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------------------

def sft(model: Any = None, data: str | InMemoryRows | None = None, *, tokenizer: Any = None,
        reward: RewardLike | None = None, eval_data: str | InMemoryRows | None = None, config: str | None = None,
        callbacks: Sequence[Callback] = (), **settings: Any) -> Result:
    """Supervised fine-tuning (``rewardhub sft``). ``reward`` scores the held-out greedy completions."""
    from rewardhub.config import SFTConfig
    from rewardhub.recipes.sft import train_sft

    values = _training_inputs(settings, model=model, tokenizer=tokenizer, data=data, eval_data=eval_data)
    provider = _provider_object(reward, values)
    cfg = load_settings(SFTConfig, values, config, checked_reward=provider is None)
    return Result(train_sft(cfg, callbacks, provider=provider), Path(cfg.out))


def train(algo: str | None = None, reward: RewardLike | None = None, model: Any = None,
          data: str | InMemoryRows | None = None, *, tokenizer: Any = None,
          eval_data: str | InMemoryRows | None = None, config: str | None = None,
          callbacks: Sequence[Callback] = (), **settings: Any) -> Result:
    """Reward-driven training (``rewardhub train``): ``algo`` ppo, grpo, rloo (with the optional SFT warm-up,
    ``sft_warmup_steps``) or dpo; ``reward`` a spec (``"verifier"``), a provider, or a function."""
    from rewardhub.config import RL_PRESETS, DPOConfig, RLConfig, read_yaml

    algo = algo or (read_yaml(Path(config)).get("algo") if config else None) or RLConfig.algo
    values = _training_inputs(settings, model=model, tokenizer=tokenizer, data=data, eval_data=eval_data)
    values["algo"] = algo
    provider = _provider_object(reward, values)
    dpo = algo == "dpo"
    # The preset is the RL demonstration's; DPO keeps DPOConfig's own defaults.
    cfg = load_settings(DPOConfig if dpo else RLConfig, values, config, None if dpo else RL_PRESETS,
                        checked_reward=provider is None)
    return Result(train_with_reward(cfg, provider, callbacks), Path(cfg.out))


def train_rm(model: Any = None, data: str | InMemoryRows | None = None, *, tokenizer: Any = None,
             eval_data: str | InMemoryRows | None = None, calibration_data: str | InMemoryRows | None = None,
             config: str | None = None, callbacks: Sequence[Callback] = (), **settings: Any) -> Result:
    """A Bradley-Terry reward model (``rewardhub train-rm``), for ``reward="reward-model"``."""
    from rewardhub.config import RewardModelConfig
    from rewardhub.recipes.reward_model import train_reward_model

    values = _training_inputs(settings, model=model, tokenizer=tokenizer, data=data, eval_data=eval_data,
                              calibration_data=calibration_data)
    cfg = load_settings(RewardModelConfig, values, config)
    return Result(train_reward_model(cfg, callbacks), Path(cfg.out))


def evaluate(model: Any = None, data: str | InMemoryRows | None = None, reward: RewardLike | None = None, *,
             tokenizer: Any = None, output: str | None = None, config: str | None = None,
             **settings: Any) -> Result:
    """Generate a completion per prompt and score it (``rewardhub eval``): the summary as ``metrics``
    (``accuracy`` for a provider that reports correctness), one row per prompt as ``rows``; ``output``
    also writes the rows as JSONL. A loaded model (with its tokenizer) and in-memory rows are used as they are."""
    from rewardhub.config import EvalConfig
    from rewardhub.data import load_rows, require_columns
    from rewardhub.evaluation import generate_completions, score_rows
    from rewardhub.models import check_context_length, load_model_and_tokenizer
    from rewardhub.out_dir import check_out_file
    from rewardhub.reward_resolution import build_reward, reward_stats

    values = dict(settings)
    loaded = model is not None and not isinstance(model, (str, os.PathLike))
    if loaded and tokenizer is None:
        raise ConfigError("a loaded model needs its tokenizer: evaluate(model=model, tokenizer=tokenizer, ...)")
    if model is not None:
        values["model"] = _object_label(model) if loaded else str(model)
    rows = None if data is None or isinstance(data, (str, os.PathLike)) else as_dataset(data)
    if data is not None:
        values["data"] = "<in-memory rows>" if rows is not None else str(data)
    if output is not None:
        values["output"] = output
    provider = _provider_object(reward, values)
    cfg = load_settings(EvalConfig, values, config, checked_reward=provider is None)
    if output is not None:
        check_out_file(cfg.output)
    if not loaded:  # before the data and the weights: a hub id that cannot be fetched, too many new tokens
        check_context_length(cfg.model, max_new_tokens=cfg.max_new_tokens)
    if rows is None:
        rows = load_rows(cfg.data, "test", cfg.data_args or None, cfg.column_map)
    if cfg.limit:
        rows = rows.select(range(min(cfg.limit, len(rows))))
    require_columns(rows, ["prompt"], "eval")
    own = provider is None
    provider = build_reward(cfg.reward, cfg.reward_args) if own else provider
    try:
        model, tokenizer = (model, tokenizer) if loaded else load_model_and_tokenizer(cfg.model)
        prompts, completions = generate_completions(model, tokenizer, rows, cfg.max_new_tokens, cfg.temperature,
                                                    cfg.batch_size, cfg.seed)
        rewards = score_rows(provider, prompts, completions, rows)
        stats = reward_stats(provider, rewards)
        name = provider.display_name
    finally:
        if own:
            provider.close()
    out_rows = [{"prompt": p, "completion": c, "reward": r.value, "status": r.status.value, "detail": r.detail}
                for p, c, r in zip(prompts, completions, rewards)]
    if output is not None:
        from rewardhub.cli.common import write_jsonl

        write_jsonl(cfg.output, out_rows)
    return Result({**stats, "reward": name}, None, out_rows)


# ------------------------------------------------------------------------------------------------------------
# shared by the API and the commands
# ------------------------------------------------------------------------------------------------------------

def load_settings(cls: type, values: Mapping[str, Any], config: str | os.PathLike | None = None,
                  presets: Mapping | None = None, checked_reward: bool = True) -> Any:
    """``cls`` from defaults < preset < YAML ``config`` < ``values`` (as the command line's flags), validated;
    its ``--verifier`` files registered and its reward spec checked (``checked_reward``) before anything loads."""
    from rewardhub.config import load_config
    from rewardhub.plugins import register_verifier_file
    from rewardhub.reward_resolution import check_reward_spec

    given = dict(values)
    if config is not None:
        given["config"] = Path(config)
    cfg = load_config(cls, argparse.Namespace(**given), presets)
    for file in getattr(cfg, "verifier_files", ()):
        register_verifier_file(file)
    if getattr(cfg, "reward", None) and checked_reward:
        check_reward_spec(cfg.reward)
    return cfg


def train_with_reward(cfg: Any, provider: RewardProvider | None = None,
                      callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train a validated RLConfig or DPOConfig against ``provider`` (built from ``cfg.reward``, and closed,
    when None): DPO, or the ReFT shape (an optional SFT warm-up stage, then RL), with a banner per stage."""
    from rewardhub.console import console
    from rewardhub.reward_resolution import build_reward, check_reward_spec, reward_spec_of

    dpo = cfg.algo == "dpo"
    own = provider is None
    if own:
        if dpo:
            from rewardhub.recipes.dpo import DPO_FALLBACK_REWARD as fallback
        else:
            from rewardhub.recipes.rl import RL_FALLBACK_REWARD as fallback
        cfg.reward = reward_spec_of(cfg, fallback)
        check_reward_spec(cfg.reward)  # fail fast: before any model or dataset is loaded
        provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        if dpo:
            from rewardhub.recipes.dpo import train_dpo

            return train_dpo(cfg, provider=provider, callbacks=callbacks,
                             announce=lambda line: console.print(line, markup=False, soft_wrap=True))
        return _rl_stages(cfg, provider, callbacks, console)
    finally:
        if own:
            provider.close()


def _rl_stages(cfg: Any, provider: RewardProvider, callbacks: Sequence[Callback], console: Any) -> dict[str, Any]:
    """The ReFT shape. The run directory is claimed (its run.json checked) with the settings as given, before
    the warm-up."""
    from rewardhub.recipes.rl import train_rl
    from rewardhub.recipes.warmup import check_warmup_data, sft_warmup
    from rewardhub.run_dir import claim

    stages = 2 if cfg.sft_warmup_steps else 1
    if cfg.sft_warmup_steps:
        check_warmup_data(cfg)  # before the run directory is touched
    with claim(cfg):
        if cfg.sft_warmup_steps:
            console.print(f"[bold]stage 1/2: SFT warm-up, {cfg.sft_warmup_steps} steps on {cfg.data} -> "
                          f"{Path(cfg.out) / 'sft-warmup'}[/]", soft_wrap=True)
            cfg.model = sft_warmup(cfg, provider)
        console.print(f"[bold]stage {stages}/{stages}: {cfg.algo.upper()} against {cfg.reward}, {cfg.max_steps} "
                      f"steps from {cfg.model} -> {cfg.out}[/]", soft_wrap=True)
        return train_rl(cfg, callbacks=callbacks, provider=provider)


# ------------------------------------------------------------------------------------------------------------
# in-memory inputs
# ------------------------------------------------------------------------------------------------------------

def inputs_dir() -> Path:
    """Where in-memory inputs of training runs are kept, named by content hash."""
    from rewardhub.tiny_model import rewardhub_home

    return rewardhub_home() / "inputs"


def as_dataset(rows: InMemoryRows):
    """A ``datasets.Dataset`` from a Dataset, a list of row dicts, or a dict of columns."""
    import datasets

    if isinstance(rows, datasets.Dataset):
        return rows
    if isinstance(rows, datasets.DatasetDict):
        raise DataError(f"got a DatasetDict with splits {list(rows)}; pass one split, e.g. data=ds['train']")
    if isinstance(rows, Mapping):
        return datasets.Dataset.from_dict(dict(rows))
    if isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in rows):
            raise DataError("in-memory data must be a datasets.Dataset, a list of dicts (one per row) or a dict of "
                            "columns")
        return datasets.Dataset.from_list([dict(r) for r in rows])
    raise DataError(f"data must be a path, a data spec, a datasets.Dataset, a list of dicts or a dict of columns; "
                    f"got {type(rows).__name__}")


def cached_rows(rows: InMemoryRows) -> str:
    """The path of a JSONL file holding ``rows``, named by the hash of its content (written once)."""
    dataset = as_dataset(rows)
    if len(dataset) == 0:
        raise DataError("the in-memory data has no rows")
    text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in dataset)
    data = text.encode("utf-8")
    path = inputs_dir() / f"data-{hashlib.sha256(data).hexdigest()[:20]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def cached_model(model: Any, tokenizer: Any) -> str:
    """The path of a ``save_pretrained`` copy of a loaded model and its tokenizer, named by content hash."""
    if tokenizer is None:
        raise ConfigError("a loaded model needs its tokenizer too: pass tokenizer=... beside model=...")
    if hasattr(model, "merge_and_unload") or hasattr(model, "peft_config"):
        raise ConfigError("model is a peft (LoRA) model: pass its base model with lora_r=... to train an adapter, "
                          "or model.merge_and_unload() to train the merged weights")
    if not hasattr(model, "save_pretrained") or not hasattr(tokenizer, "save_pretrained"):
        raise ConfigError(f"model must be a path, a hub id or a transformers model with save_pretrained; got "
                          f"{type(model).__name__}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = inputs_dir()
    tmp = root / f".model-{os.getpid()}-{id(model)}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    digest = hashlib.sha256()
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(tmp)).encode() + b"\0" + file.read_bytes())
    path = root / f"model-{digest.hexdigest()[:20]}"
    if path.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, path)
    return str(path)


def _training_inputs(settings: Mapping[str, Any], *, model: Any = None, tokenizer: Any = None,
                     **data: Any) -> dict[str, Any]:
    """The settings with ``model`` and the data arguments as paths (in-memory ones cached), Nones left out."""
    values = dict(settings)
    if model is not None:
        values["model"] = str(model) if isinstance(model, (str, os.PathLike)) else cached_model(model, tokenizer)
    elif tokenizer is not None:
        raise ConfigError("tokenizer= goes with a loaded model=; with a model path the tokenizer is loaded from it")
    for name, value in data.items():
        if value is not None:
            values[name] = str(value) if isinstance(value, (str, os.PathLike)) else cached_rows(value)
    return values


def _provider_object(reward: RewardLike | None, values: dict[str, Any]) -> RewardProvider | None:
    """A provider for ``reward`` given as an object (its label goes into the config); None for a spec string,
    which goes into ``values`` as the command line's ``--reward``."""
    from rewardhub.reward_resolution import provider_of

    if reward is None:
        return None
    if isinstance(reward, str):
        values["reward"] = reward
        return None
    label = _object_label(reward)
    values["reward"] = label  # recorded in run.json: a rerun with another function is noticed
    return provider_of(reward, label)


def _object_label(obj: Any) -> str:
    target = obj if callable(obj) and not isinstance(obj, RewardProvider) else type(obj)
    name = getattr(target, "__qualname__", None) or type(obj).__name__
    return f"python:{getattr(target, '__module__', '?')}.{name}"
