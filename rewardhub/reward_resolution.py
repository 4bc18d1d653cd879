"""From ``--reward`` and ``--reward-arg`` to a ready :class:`~rewardhub.rewards.RewardProvider`.

A spec is a registered name (``verifier``), a weighted mix (``verifier=1.0,length=0.1``) or an import path
(``my_pkg.rewards:Brevity``, or ``path/to/file.py:my_fn``) naming a provider class, a provider instance or a
plain function: per sample, ``(completion, row) -> float | bool | None``, or batched in TRL's ``GRPOTrainer``
form, ``(prompts, completions, **kwargs) -> list[float | None]`` (told apart by the signature, see
:func:`is_trl_reward_function`). From Python, :func:`build_reward` also takes the objects themselves: a
function, a provider, a list of them (TRL's ``reward_funcs``) or a mapping of them to weights.

:func:`check_reward_spec` resolves every name without building anything, so a typo fails before a model is
loaded, with the list of what is available.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import numbers
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError, RewardProviderError, UnknownNameError
from rewardhub.options import bind_options
from rewardhub.plugins import Registry, build_registry, load_python_file
from rewardhub.rewards import FAILURE_STATUSES, Reward, RewardProvider, Sample, Status, as_reward


@dataclass(frozen=True)
class RewardTerm:
    """One provider of a (possibly weighted) reward spec."""

    name: str
    weight: float = 1.0


def parse_reward_spec(spec: str) -> list[RewardTerm]:
    """``"verifier=1,length=0.1"`` -> two terms; ``"verifier"`` -> one term of weight 1."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--reward is empty; give a provider name (see `rewardhub plugins`), e.g. --reward=verifier")
    terms, problems = [], []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            problems.append(f"--reward {spec!r} has an empty item")
            continue
        name, sep, weight = part.rpartition("=") if "=" in part else (part, "", "")
        name = name.strip()
        if sep:
            try:
                w = float(weight)
            except ValueError:
                problems.append(f"--reward item {part!r}: weight {weight!r} is not a number")
                continue
        else:
            w = 1.0
        if any(t.name == name for t in terms):
            problems.append(f"--reward names {name!r} twice")
            continue
        terms.append(RewardTerm(name, w))
    if problems:
        raise ConfigError(problems, header="invalid --reward")
    return terms


def is_import_path(name: str) -> bool:
    return ":" in name


def import_object(path: str) -> Any:
    """Import ``module.sub:attr`` or ``path/to/file.py:attr``; errors say which part was not found."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise UnknownNameError(f"{path!r} is not an import path; use module:attribute or file.py:attribute")
    if module_name.endswith(".py"):
        module = load_python_file(module_name)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules next to the user's run are found
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownNameError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnknownNameError(f"module {module_name!r} has no attribute {attr!r}") from None


def check_reward_spec(spec: str, registry: Registry | None = None) -> list[RewardTerm]:
    """Resolve every name in ``spec`` without building providers; raise on the first unknown one."""
    registry = registry or build_registry()
    terms = parse_reward_spec(spec)
    for term in terms:
        if is_import_path(term.name):
            import_object(term.name)
        else:
            registry.get("reward", term.name)
    return terms


def split_reward_args(args: Mapping[str, Any], terms: Sequence[RewardTerm]) -> dict[str, dict[str, Any]]:
    """Route ``key=value`` (single provider) and ``name.key=value`` (any) options to their provider."""
    names = [t.name for t in terms]
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    problems = []
    for key, value in args.items():
        if isinstance(value, Mapping) and key in routed:  # YAML: reward_args: {verifier: {timeout_s: 5}}
            routed[key].update(value)
            continue
        owner, dot, option = key.partition(".")
        if dot and owner in routed:
            routed[owner][option] = value
        elif len(names) == 1:
            routed[names[0]][key] = value
        else:
            problems.append(
                f"reward option {key!r} is ambiguous with several providers ({', '.join(names)}); "
                f"write it as PROVIDER.{key}"
            )
    if problems:
        raise ConfigError(problems)
    return routed


def task_reward(data: str | None, registry: Registry | None = None) -> str | None:
    """The ``default_reward`` of the task ``data`` names (``arithmetic``, ``arithmetic-cot:test``), else None."""
    from rewardhub.data import parse_data_spec

    if not data:
        return None
    registry = registry or build_registry()
    name, _ = parse_data_spec(data)
    if name not in registry.entries["task"]:
        return None
    return registry.get("task", name).obj.default_reward


def reward_spec_of(cfg: Any, fallback: str | None) -> str | None:
    """What ``--reward`` means for a run: the flag, else the task's own reward, else ``fallback``.

    A task knows which reward fits it (``Task.default_reward``), so ``--data arithmetic-cot`` trains and is
    evaluated against the verifier without naming it; other data fall back to the recipe's default.
    """
    return cfg.reward or task_reward(getattr(cfg, "data", None)) or fallback


def build_reward(spec: str | Any, args: Mapping[str, Any] | None = None,
                 registry: Registry | None = None) -> RewardProvider:
    """Build the provider for ``spec`` with its options (a single provider, or a :class:`WeightedReward`).

    ``spec`` is a ``--reward`` string, or (from Python) the objects themselves: a function (per sample or
    TRL-style), a provider instance or class, a list of them (weight 1 each, like TRL's ``reward_funcs``), or a
    mapping of them (or of ``--reward`` names) to weights::

        build_reward(my_trl_fn)                       # TRL: GRPOTrainer(reward_funcs=my_trl_fn)
        build_reward([fmt_fn, "verifier"])            # TRL: reward_funcs=[fmt_fn, ...], weights 1
        build_reward({my_trl_fn: 1.0, "length": 0.1}) # --reward="file.py:my_trl_fn=1.0,length=0.1"
    """
    registry = registry or build_registry()
    if not isinstance(spec, str):
        return _build_objects(spec, args or {}, registry)
    terms = check_reward_spec(spec, registry)
    routed = split_reward_args(args or {}, terms)
    built = [(t, _build_one(t.name, routed[t.name], registry)) for t in terms]
    if len(built) == 1 and built[0][0].weight == 1.0:
        return built[0][1]
    return WeightedReward(built)


def _build_objects(spec: Any, args: Mapping[str, Any], registry: Registry) -> RewardProvider:
    """:func:`build_reward` for Python objects: one, a list (weights 1) or a mapping to weights."""
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        items = [(obj, 1.0) for obj in spec]
    else:
        items = [(spec, 1.0)]
    if not items:
        raise ConfigError("build_reward got an empty list of rewards; give at least one function or provider")
    terms, objects, problems = [], [], []
    for obj, weight in items:
        name = obj if isinstance(obj, str) else _object_name(obj)
        if isinstance(obj, str) and not is_import_path(obj):
            registry.get("reward", obj)  # an unknown name fails here, with the list of names
        if any(t.name == name for t in terms):
            problems.append(f"build_reward names {name!r} twice")
            continue
        try:
            terms.append(RewardTerm(name, float(weight)))
        except (TypeError, ValueError):
            problems.append(f"build_reward: weight {weight!r} of {name!r} is not a number")
            continue
        objects.append(obj)
    if problems:
        raise ConfigError(problems, header="invalid reward")
    routed = split_reward_args(args, terms)
    built = []
    for term, obj in zip(terms, objects):
        if isinstance(obj, str):
            built.append((term, _build_one(obj, routed[term.name], registry)))
        else:
            built.append((term, provider_of(obj, term.name, routed[term.name])))
    if len(built) == 1 and built[0][0].weight == 1.0:
        return built[0][1]
    return WeightedReward(built)


def _object_name(obj: Any) -> str:
    if isinstance(obj, RewardProvider):
        return obj.name or type(obj).__name__
    return getattr(obj, "__name__", None) or type(obj).__name__


def _build_one(name: str, options: Mapping[str, Any], registry: Registry) -> RewardProvider:
    obj = import_object(name) if is_import_path(name) else registry.get("reward", name).obj
    return provider_of(obj, name, options)


def provider_of(obj: Any, name: str, options: Mapping[str, Any] | None = None) -> RewardProvider:
    """A provider from what a reward name (or the Python API's ``reward=``) stands for: a provider instance, a
    provider class (built with ``options``), or a plain function ``(completion, row) -> score``."""
    options = options or {}
    if isinstance(obj, RewardProvider):
        if options:
            raise ConfigError(f"reward {name!r} is a ready instance and takes no options (got {sorted(options)})")
        provider = obj
    elif isinstance(obj, type) and issubclass(obj, RewardProvider):
        provider = obj(**bind_options(obj, options, f"reward {name!r}"))
    elif callable(obj):
        if options:
            raise ConfigError(f"reward {name!r} is a plain function and takes no options (got {sorted(options)})")
        provider = reward_function(obj)
    else:
        raise ConfigError(f"reward {name!r} is a {type(obj).__name__}, not a RewardProvider class or function")
    provider.name = provider.name or name
    return provider


def reward_function(fn: Callable) -> RewardProvider:
    """A plain function as a provider: :class:`TRLFunctionReward` when :func:`is_trl_reward_function` says it is
    batched in TRL's form, else the per-sample :class:`FunctionReward`."""
    return TRLFunctionReward(fn) if is_trl_reward_function(fn) else FunctionReward(fn)


def is_trl_reward_function(fn: Callable) -> bool:
    """Whether ``fn`` is a batched TRL reward function rather than a per-sample ``(completion, row)`` one.

    TRL calls a reward function by keyword (``prompts=..., completions=..., completion_ids=..., **columns``), so
    a TRL function names ``prompts`` or ``completions``, or takes only keywords (``def f(**kwargs)``); a
    per-sample function takes the completion and the row positionally, under other names.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: treat as per sample, as before
        return False
    if "prompts" in params or "completions" in params:
        return True
    keyword_only = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return bool(params) and all(p.kind in keyword_only for p in params.values())


class FunctionReward(RewardProvider):
    """A plain function ``(completion, row) -> float | bool | None | Reward`` as a provider.

    An exception for one sample becomes status ``error`` with the exception text; the rest are scored.
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", "function")
        params = inspect.signature(fn).parameters
        self._takes_prompt = "prompt" in params

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        out = []
        for s in samples:
            try:
                kwargs = {"prompt": s.prompt} if self._takes_prompt else {}
                out.append(as_reward(self.fn(s.completion, dict(s.row), **kwargs), f"function {self.name!r}"))
            except Exception as exc:
                out.append(Reward.failed(Status.ERROR, f"{type(exc).__name__}: {exc}"))
        return out


#: The arguments TRL's ``GRPOTrainer`` passes every reward function besides the dataset columns; columns of
#: these names are not passed (TRL leaves out the ``prompt``, ``completion`` and ``completion_ids`` columns too).
TRL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
_NOT_COLUMNS = frozenset({"prompt", "completion", *TRL_ARGUMENTS})


class TRLFunctionReward(RewardProvider):
    """A TRL-style batched reward function ``f(prompts, completions, **kwargs) -> list[float | None]``.

    Called once per batch, by keyword, as ``GRPOTrainer`` calls it:

    * ``prompts``: each row's ``prompt`` column as the data holds it (a string, or a list of messages for
      conversational data); the rendered prompt when a row has no ``prompt`` column.
    * ``completions``: the generated texts; for conversational prompts, ``[{"role": "assistant",
      "content": text}]`` per completion, as TRL does.
    * ``completion_ids``: the sampled token ids, EOS included (:attr:`Sample.completion_ids`; ``None`` for a
      completion that was not sampled token by token: held-out evaluation, ``rewardhub score``, DPO).
    * every other column of the rows, as a keyword holding the list of its values (``None`` where a row lacks it).
    * ``trainer_state``: ``None`` (rewardhub has no transformers ``TrainerState``); ``log_metric(name, value)``:
      logged as ``provider/log/NAME``; ``log_extra(column, values)``: accepted and ignored.

    A function with ``**kwargs`` gets all of them; otherwise only those its signature names. The result must be
    one value per completion: a number (a bool is 1/0 as for per-sample functions), or ``None`` (or NaN) for
    "no reward for this sample", which becomes a failed reward (status ``error``) that training masks out of
    the update and counts towards ``--max-failure-rate``. A result of the wrong length or a value that is not a
    number is a :class:`~rewardhub.errors.RewardProviderError` naming the function; an exception the function
    raises fails the batch's rewards (status ``error``, with the exception text).
    """

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", None) or type(fn).__name__
        params = inspect.signature(fn).parameters
        self._takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._named = {n for n, p in params.items()
                       if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
        self._required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                          and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        self._logged: dict[str, list[float]] = {}

    @property
    def label(self) -> str:
        return f"TRL-style reward function {self.name!r}"

    def arguments(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """The keyword arguments one call gets for ``samples`` (every one TRL passes; see the class doc)."""
        prompts = [s.row.get("prompt", s.prompt) for s in samples]
        completions: list[Any] = [s.completion for s in samples]
        if prompts and isinstance(prompts[0], list):  # conversational, as TRL's is_conversational decides
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        columns: dict[str, None] = {}
        for s in samples:
            columns.update(dict.fromkeys(k for k in s.row if k not in _NOT_COLUMNS))
        kwargs: dict[str, Any] = {
            "prompts": prompts, "completions": completions,
            "completion_ids": [None if s.completion_ids is None else list(s.completion_ids) for s in samples],
            **{k: [s.row.get(k) for s in samples] for k in columns},
            "trainer_state": None, "log_extra": _ignore, "log_metric": self._log_metric,
        }
        return kwargs if self._takes_all else {k: v for k, v in kwargs.items() if k in self._named}

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        kwargs = self.arguments(samples)
        missing = [n for n in self._required if n not in kwargs]
        if missing:
            have = sorted({k for s in samples for k in s.row})
            detail = (f"{self.label} takes {', '.join(map(repr, missing))}, which is neither a TRL argument "
                      f"({', '.join(TRL_ARGUMENTS)}) nor a column of these rows (columns: {', '.join(have)})")
            return [Reward.failed(Status.ERROR, detail) for _ in samples]
        try:
            result = self.fn(**kwargs)
            if inspect.isawaitable(result):  # TRL accepts async reward functions too
                result = asyncio.run(_awaited(result))
        except Exception as exc:
            detail = f"{self.label} raised {type(exc).__name__}: {exc}"
            return [Reward.failed(Status.ERROR, detail) for _ in samples]
        return [self._reward(v, i) for i, v in enumerate(self._values(result, len(samples)))]

    def _values(self, result: Any, n: int) -> list[Any]:
        if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):  # numpy array, torch tensor
            result = result.tolist()
        if not isinstance(result, (list, tuple)):
            raise RewardProviderError(
                f"{self.label} returned {type(result).__name__}; it must return one reward per completion, a "
                f"list of {n} floats (None for no reward)")
        if len(result) != n:
            raise RewardProviderError(
                f"{self.label} returned {len(result)} rewards for {n} completions; it must return one per "
                "completion, in order (None for no reward)")
        return list(result)

    def _reward(self, value: Any, index: int) -> Reward:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return Reward.failed(Status.ERROR, f"{self.label} returned {value} for this completion (TRL: no "
                                 "reward); masked out of the update")
        if isinstance(value, Reward):
            return value
        if isinstance(value, (bool, numbers.Real)):
            return as_reward(value if isinstance(value, bool) else float(value), self.label)
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise RewardProviderError(
            f"{self.label} returned {type(value).__name__} {shown} for completion {index}; each reward must be a "
            "number (float, int, bool) or None")

    def _log_metric(self, name: str, value: float) -> None:
        self._logged.setdefault(str(name), []).append(float(value))

    def metrics(self) -> dict[str, float]:
        merged = super().metrics()
        merged.update({f"log/{k}": statistics.fmean(v) for k, v in self._logged.items() if v})
        self._logged.clear()
        return merged


def _ignore(*args: Any, **kwargs: Any) -> None:
    """TRL's ``log_extra``: rewardhub's completions table has no extra columns, so it is accepted and ignored."""


async def _awaited(result: Any) -> Any:
    return await result


class WeightedReward(RewardProvider):
    """A weighted sum of providers, each component kept in ``Reward.parts`` for logging.

    Status: a failure (timeout/error/pending) of any component makes the sample a failure (it is masked
    out of training rather than scored on the remaining components); otherwise the status of the first
    provider in the spec, the primary signal (e.g. ``wrong`` from the verifier).
    """

    def __init__(self, components: Sequence[tuple[RewardTerm, RewardProvider]]):
        super().__init__()
        self.components = list(components)
        self.name = ",".join(f"{t.name}={t.weight:g}" for t, _ in self.components)

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        columns = [(term, provider(samples)) for term, provider in self.components]
        out = []
        for i in range(len(samples)):
            parts = {term.name: col[i].value for term, col in columns}
            failed = [(term, col[i]) for term, col in columns if col[i].status in FAILURE_STATUSES]
            if failed:
                term, r = failed[0]
                out.append(Reward(0.0, r.status, f"{term.name}: {r.detail}", parts))
                continue
            value = sum(term.weight * col[i].value for term, col in columns)
            out.append(Reward(value, columns[0][1][i].status, columns[0][1][i].detail, parts))
        return out

    def metrics(self) -> dict[str, float]:
        merged = super().metrics()
        for term, provider in self.components:
            merged.update({f"{term.name}/{k}": v for k, v in provider.metrics().items()})
        return merged

    def close(self) -> None:
        for _, provider in self.components:
            provider.close()


def summarize(rewards: Sequence[Reward]) -> dict[str, float]:
    """Mean/std over usable rewards, per component, and the share of each status."""
    usable = [r for r in rewards if r.usable]
    stats: dict[str, float] = {"count": float(len(rewards))}
    if usable:
        values = [r.value for r in usable]
        stats["mean"] = statistics.fmean(values)
        stats["std"] = statistics.pstdev(values)
        for name in usable[0].parts:
            part = [r.parts[name] for r in usable if name in r.parts]
            stats[f"{name}/mean"] = statistics.fmean(part)
            stats[f"{name}/std"] = statistics.pstdev(part)
    for status in Status:
        n = sum(r.status is status for r in rewards)
        if n:
            stats[f"frac_{status.value}"] = n / len(rewards)
    return stats


def reward_stats(provider: RewardProvider, rewards: Sequence[Reward]) -> dict[str, float]:
    """:func:`summarize`, plus ``accuracy`` (the share scored ok) for a provider that reports correctness."""
    stats = summarize(rewards)
    if provider.reports_correctness:
        stats["accuracy"] = stats.get("frac_ok", 0.0)
    return stats
