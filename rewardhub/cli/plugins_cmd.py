"""``rewardhub plugins``: every provider, verifier, task and plugin command, with the package and version it came
from; ``--options NAME``: the options a reward provider takes (``--reward-arg KEY=VALUE``)."""

from __future__ import annotations

import json
from typing import Any

from rewardhub.cli.common import console, print_table
from rewardhub.plugins import KINDS, build_registry


def add_parser(sub):
    p = sub.add_parser("plugins", help="list reward providers, verifiers, tasks and commands from installed plugins",
                       description="List every registered reward provider, verifier, task and plugin command with "
                       "its package and version, and any plugin that failed to load. With --options NAME, list "
                       "the options reward provider NAME takes (set them with --reward-arg KEY=VALUE).")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--options", metavar="NAME", default=None,
                   help="list reward provider NAME's options: type, default and help")
    return p


def run(args) -> int:
    registry = build_registry()
    if args.options is not None:
        return _print_options(registry, args.options, args.json)
    entries = [e for kind in KINDS for e in sorted(registry.entries[kind].values(), key=lambda e: e.name)]
    if args.json:
        print(json.dumps({
            "plugins": [{"kind": e.kind, "name": e.name, "package": e.package, "version": e.version,
                         "plugin": e.plugin, "description": e.description} for e in entries],
            "failures": [{"plugin": f.plugin, "package": f.package, "error": f.error} for f in registry.failures],
        }, indent=2))
        return 0
    print_table("rewardhub plugins", ["kind", "name", "package", "version", "description"],
                [(e.kind, e.name, e.package, e.version, e.description) for e in entries])
    if registry.failures:
        print_table("plugins that failed to load", ["plugin", "package", "error"],
                    [(f.plugin, f.package, f.error) for f in registry.failures])
    if not entries:
        console.print("No plugins loaded. Is REWARDHUB_LOAD_PLUGINS set to an empty value?")
    return 0


def reward_options(registry, name: str) -> list[dict[str, Any]]:
    """The options of reward provider ``name`` as its constructor declares them (none for a plain function or a
    ready instance); an unknown name raises :class:`~rewardhub.errors.UnknownNameError` listing the names."""
    from rewardhub.options import describe_options
    from rewardhub.rewards import RewardProvider

    obj = registry.get("reward", name).obj
    if isinstance(obj, type) and issubclass(obj, RewardProvider):
        return describe_options(obj)
    return []


def _print_options(registry, name: str, as_json: bool) -> int:
    entry = registry.get("reward", name)  # unknown: the error lists the reward providers
    options = reward_options(registry, name)
    if as_json:
        print(json.dumps({"reward": entry.name, "package": entry.package, "version": entry.version,
                          "description": entry.description, "options": options}, indent=2, default=str))
        return 0
    if not options:
        console.print(f"reward {name!r} ({entry.package}) takes no options")
        return 0
    print_table(f"options of reward {name!r} ({entry.package} {entry.version}): --reward-arg KEY=VALUE",
                ["option", "type", "default", "help"],
                [(o["name"], o["type"], "(required)" if o["required"] else _shown(o["default"]), o["help"])
                 for o in options])
    return 0


def _shown(value: Any) -> str:
    """A default as it would be written after ``--reward-arg KEY=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
