"""Entry point of the ``rewardhub`` command: builds the subcommands and turns user errors into messages.

The core's commands come first; plugins add theirs through ``rewardhub_register_commands`` (``serve`` from
the judge plugin, ``feedback`` from the feedback plugin). ``REWARDHUB_LOAD_PLUGINS`` chooses which plugins
load, so it chooses their commands too.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from rewardhub import __version__
from rewardhub.cli import eval_cmd, plugins_cmd, report_cmd, score_cmd, sft_cmd, train_cmd, train_rm_cmd
from rewardhub.errors import PluginError, RewardhubError
from rewardhub.plugins import CORE, Command, RegistryEntry, build_commands

log = logging.getLogger(__name__)

CORE_COMMANDS = {name: Command(module.add_parser, module.run) for name, module in (
    ("plugins", plugins_cmd), ("sft", sft_cmd), ("train", train_cmd), ("train-rm", train_rm_cmd),
    ("score", score_cmd), ("eval", eval_cmd), ("report", report_cmd),
)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardhub",
        description="Post-training where the method is chosen by the reward source (SFT, RLHF, ReFT, RLAIF, DPO).",
    )
    parser.add_argument("--version", action="version", version=f"rewardhub {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in build_commands(CORE_COMMANDS).entries["command"].values():
        _add_command(sub, entry)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` by name (``{}`` when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _add_command(sub: argparse._SubParsersAction, entry: RegistryEntry) -> None:
    """Add one command; a plugin's ``add_parser`` that fails (or adds another name) costs only its command."""
    try:
        parser = entry.obj.add_parser(sub)
        if sub.choices.get(entry.name) is not parser:
            raise PluginError(f"add_parser must return subparsers.add_parser({entry.name!r}, ...), got {parser!r}")
    except Exception as exc:
        if entry.plugin == CORE:
            raise
        problem = (f"command {entry.name!r} of plugin {entry.plugin} (package {entry.package}) could not be built: "
                   f"{type(exc).__name__}: {exc}")
        log.warning("rewardhub %s", problem)
        if entry.name in sub.choices:  # half-built: running it reports the problem instead of a KeyError
            sub.choices[entry.name].set_defaults(handler=_fail_with(problem))
        return
    parser.set_defaults(handler=entry.obj.run)


def _fail_with(problem: str):
    def handler(args) -> int:
        raise PluginError(problem)

    return handler


#: A negative number as a flag value: -1, -0.1, -.5, -1e-3, -2.5E+4.
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3`` for every option that takes one value, so argparse reads the number as
    the value (it takes ``-1e-3`` for an option otherwise) and validation can say what is wrong with it.

    Only a token right after an option that takes a value is joined; options without a value (``--resume``),
    positionals and everything after ``--`` are left as they are.
    """
    subs, current, out = subcommands(parser), parser, []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        if current is parser and token in subs:
            current = subs[token]
        action = current._option_string_actions.get(token) if token.startswith("-") else None
        if (action is not None and action.nargs is None and i + 1 < len(argv)
                and _NEGATIVE_NUMBER.fullmatch(argv[i + 1])):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except RewardhubError as exc:  # two plugins (or a plugin and the core) claim one command name
        print(f"rewardhub: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(join_negative_values(parser, sys.argv[1:] if argv is None else list(argv)))
    verbose = args.__dict__.pop("verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handler = args.__dict__.pop("handler")
    try:
        return handler(args) or 0
    except RewardhubError as exc:
        if verbose:
            raise
        print(f"rewardhub {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"rewardhub {args.command}: interrupted; finished steps are checkpointed, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
