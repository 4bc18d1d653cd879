"""``rewardhub plugins``: every provider, verifier, task and plugin command, with the package and version it came
from."""

from __future__ import annotations

import json

from rewardhub.cli.common import console, print_table
from rewardhub.plugins import KINDS, build_registry


def add_parser(sub):
    p = sub.add_parser("plugins", help="list reward providers, verifiers, tasks and commands from installed plugins",
                       description="List every registered reward provider, verifier, task and plugin command with "
                       "its package and version, and any plugin that failed to load.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args) -> int:
    registry = build_registry()
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
