"""Entry point of the ``rewardhub`` command: builds the subcommands and turns user errors into messages."""

from __future__ import annotations

import argparse
import logging
import sys

from rewardhub import __version__
from rewardhub.cli import eval_cmd, feedback_cmd, plugins_cmd, score_cmd, serve_cmd, sft_cmd, train_cmd, train_rm_cmd
from rewardhub.errors import RewardhubError

COMMANDS = (plugins_cmd, sft_cmd, train_cmd, train_rm_cmd, score_cmd, eval_cmd, serve_cmd, feedback_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardhub",
        description="Post-training where the method is chosen by the reward source (SFT, RLHF, ReFT, RLAIF, DPO).",
    )
    parser.add_argument("--version", action="version", version=f"rewardhub {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
