"""From ``--reward`` and ``--reward-arg`` to a ready :class:`~rewardhub.rewards.RewardProvider`.

A spec is a registered name (``verifier``), a weighted mix (``verifier=1.0,length=0.1``) or an import path
(``my_pkg.rewards:Brevity``, or ``path/to/file.py:my_fn``) naming a provider class, a provider instance or a
plain function ``(completion, row) -> float | bool | None``.

:func:`check_reward_spec` resolves every name without building anything, so a typo fails before a model is
loaded, with the list of what is available.
"""

from __future__ import annotations

import importlib
import inspect
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError, UnknownNameError
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


def build_reward(spec: str, args: Mapping[str, Any] | None = None, registry: Registry | None = None) -> RewardProvider:
    """Build the provider for ``spec`` with its options (a single provider, or a :class:`WeightedReward`)."""
    registry = registry or build_registry()
    terms = check_reward_spec(spec, registry)
    routed = split_reward_args(args or {}, terms)
    built = [(t, _build_one(t.name, routed[t.name], registry)) for t in terms]
    if len(built) == 1 and built[0][0].weight == 1.0:
        return built[0][1]
    return WeightedReward(built)


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
        provider = FunctionReward(obj)
    else:
        raise ConfigError(f"reward {name!r} is a {type(obj).__name__}, not a RewardProvider class or function")
    provider.name = provider.name or name
    return provider


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
