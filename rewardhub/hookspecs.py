"""The plugin contract: pluggy hook specifications. This module is rewardhub's public API for plugins.

Every hook receives a ``register`` callable and calls it once per thing it contributes, so one plugin can
offer several providers, verifiers, tasks or commands, and the core (not the plugin) keeps the registry,
detects duplicate names and reports which package each name came from.

Hooks are called with keyword arguments only; an implementation may accept a subset of a spec's arguments,
so specs can gain arguments later without breaking plugins.

A plugin is any importable module (or object) with ``@rewardhub.hookimpl`` functions, made discoverable by
an entry point in the ``rewardhub`` group of its package::

    # pyproject.toml of a third-party package
    [project.entry-points.rewardhub]
    my_rewards = "my_rewards.plugin"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from rewardhub.rewards import Reward, RewardProvider

hookspec = pluggy.HookspecMarker("rewardhub")
hookimpl = pluggy.HookimplMarker("rewardhub")


@dataclass(frozen=True)
class Task:
    """A named dataset builder, what ``rewardhub_register_tasks`` registers.

    Args:
        build: ``build(split: str, **options) -> datasets.Dataset``; options come from ``--data-arg``.
        default_reward: the reward spec that fits the task (e.g. ``"verifier"``): ``--reward`` when the user
            names none, and what every recipe's held-out evaluation on the task scores with.
        splits: the splits ``build`` accepts; the first is the training split, the second held-out.
    """

    build: Callable[..., Any]
    default_reward: str = "verifier"
    splits: tuple[str, ...] = ("train", "test")


class RegisterReward(Protocol):
    def __call__(
        self,
        name: str,
        provider: type[RewardProvider] | RewardProvider | Callable[..., float | bool | Reward | None],
        *,
        description: str = "",
    ) -> None: ...


class RegisterVerifier(Protocol):
    def __call__(self, name: str, check: Callable[[str, dict[str, Any]], Any], *, description: str = "") -> None:
        ...


class RegisterTask(Protocol):
    def __call__(self, name: str, task: Task, *, description: str = "") -> None: ...


class RegisterCommand(Protocol):
    def __call__(
        self,
        name: str,
        add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser],
        run: Callable[[argparse.Namespace], int | None],
        *,
        description: str = "",
    ) -> None: ...


@hookspec
def rewardhub_register_rewards(register: RegisterReward) -> None:
    """Contribute reward providers, selectable with ``--reward=NAME``.

    Call ``register(name, provider)`` with a :class:`rewardhub.RewardProvider` subclass. Its ``__init__``
    keyword arguments (with type annotations) are the provider's options, set with ``--reward-arg
    key=value`` or under ``reward_args`` in a YAML config. A ready provider instance, or a plain function
    ``fn(completion, row) -> float | bool | None | Reward`` (wrapped like ``--reward=file.py:fn``), is
    accepted too; neither takes options.

    Example::

        from rewardhub import Reward, RewardProvider, hookimpl

        class Brevity(RewardProvider):
            def __init__(self, limit: int = 100):
                super().__init__()
                self.limit = limit

            def score(self, samples):
                return [Reward(float(len(s.completion) <= self.limit)) for s in samples]

        @hookimpl
        def rewardhub_register_rewards(register):
            register("brevity", Brevity, description="1 if the completion is short")
    """


@hookspec
def rewardhub_register_verifiers(register: RegisterVerifier) -> None:
    """Contribute checkers for the ``verifier`` reward provider.

    Call ``register(name, check)`` with a plain function ``check(completion: str, row: dict) -> float |
    bool | None | Reward``. The verifier provider picks a checker per dataset row (its ``verifier``
    column) or by option. ``@rewardhub.verifier("name")`` builds the same registration from a decorator.

    Example::

        from rewardhub import hookimpl

        def is_json(completion: str, row: dict) -> bool:
            import json
            try:
                json.loads(completion)
                return True
            except ValueError:
                return False

        @hookimpl
        def rewardhub_register_verifiers(register):
            register("json", is_json, description="the completion parses as JSON")
    """


@hookspec
def rewardhub_register_tasks(register: RegisterTask) -> None:
    """Contribute named tasks: a dataset builder plus the reward that fits it.

    Call ``register(name, task)`` with a :class:`Task` (``build(split, **options) -> datasets.Dataset``
    and ``default_reward``). ``--data NAME`` (or ``--data NAME:split``) then loads it.

    Example::

        from rewardhub import Task, hookimpl

        @hookimpl
        def rewardhub_register_tasks(register):
            register("capitals", Task(build=build_capitals, default_reward="verifier"))
    """


@hookspec
def rewardhub_register_commands(register: RegisterCommand) -> None:
    """Contribute subcommands of ``rewardhub``, listed by ``rewardhub --help`` after the core's.

    Call ``register(name, add_parser, run)``. ``add_parser(subparsers)`` adds the command with
    ``subparsers.add_parser(name, help=...)``, declares its flags and returns that parser. ``run(args)`` runs
    it with the parsed :class:`argparse.Namespace` and returns the exit status (``None`` is 0); a
    :class:`rewardhub.errors.RewardhubError` it raises is printed as ``rewardhub NAME: error: ...`` with exit
    status 2, like a core command's. Import heavy modules inside ``run``, so ``rewardhub --help`` stays fast.
    A name already taken, by a core command or another plugin, is an error naming both packages.

    Example::

        from rewardhub import hookimpl

        def add_parser(subparsers):
            p = subparsers.add_parser("hello", help="greet someone")
            p.add_argument("--name", default="world")
            return p

        def run(args):
            print(f"hello, {args.name}")

        @hookimpl
        def rewardhub_register_commands(register):
            register("hello", add_parser, run, description="greet someone")
    """
