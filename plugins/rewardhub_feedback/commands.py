"""``rewardhub feedback``, the feedback plugin's command: manage a human-feedback store (the ``human`` reward
provider's SQLite file). Registered through ``rewardhub_register_commands`` in :mod:`rewardhub_feedback`.

``serve`` starts the labelling page and HTTP API; ``import`` loads preference pairs (TRL's format) from a
JSONL file, any data file or a registered task; ``export`` writes the pairs back out as JSONL; ``stats``
prints what the store holds. The store module is imported lazily so ``rewardhub --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rewardhub.cli.common import console, print_summary

from .provider import DEFAULT_DB  # the human provider's default: both meet in the directory you run from

FEEDBACK_HELP = "human-feedback store: serve the labelling page/API, import, export, stats"


def add_feedback_parser(sub):
    p = sub.add_parser(
        "feedback", help=FEEDBACK_HELP,
        description="Manage a human-feedback store, the SQLite file the `human` reward provider reads: "
        "`rewardhub train --algo dpo --reward=human` trains on its comparisons, and "
        "`rewardhub train --reward=human` rewards completions with its ratings (queueing unrated ones).")
    fsub = p.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")
    db_help = f"the store's SQLite file (default: ./{DEFAULT_DB})"

    s = fsub.add_parser("serve", help="serve the labelling page and the HTTP API",
                        description="Serve the labelling page (GET /) and the JSON API (/api/...) for a store, "
                        "creating the store if it does not exist. Stop with Ctrl-C.")
    s.add_argument("--db", default=DEFAULT_DB, help=db_help)
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this "
                   "machine only; 0.0.0.0 exposes the unauthenticated API to the network)")
    s.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    s.add_argument("--min-score", type=float, default=None, help="lowest rating of a NEW store (default 1)")
    s.add_argument("--max-score", type=float, default=None, help="highest rating of a NEW store (default 5)")

    i = fsub.add_parser("import", help="import preference pairs (prompt/chosen/rejected)",
                        description="Import preference rows in TRL's format (prompt, chosen, rejected; strings or "
                        "message lists) into a store, creating it if needed. SOURCE is a .jsonl file (errors name "
                        "the line), another data file, or a registered task such as arithmetic-preferences. Extra "
                        "columns are kept as metadata. All rows are checked first: one bad row imports nothing.")
    i.add_argument("source", metavar="SOURCE", help="a .jsonl file, a .json/.parquet/.csv file, or a task name")
    i.add_argument("--db", default=DEFAULT_DB, help=db_help)
    i.add_argument("--annotator", default="", help="annotator name for rows without one (default: anonymous)")
    i.add_argument("--source-tag", default=None, help="source recorded with each row (default: SOURCE's name)")
    i.add_argument("--split", default="train", help="split of a task or dataset (default: train)")
    i.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, e.g. --data-arg size=64 for arithmetic-preferences")

    e = fsub.add_parser("export", help="write the pairs as JSONL (TRL preference format)",
                        description="Write the store's pairs as JSONL with prompt/chosen/rejected, one row per "
                        "labelled pair in the majority's direction (what DPO trains on). --raw writes every stored "
                        "comparison with annotator, time, source and metadata (a lossless backup).")
    e.add_argument("--db", default=DEFAULT_DB, help=db_help)
    e.add_argument("-o", "--output", type=Path, default=None, help="output file (default: standard output)")
    e.add_argument("--raw", action="store_true", help="every comparison with its annotator and metadata")

    t = fsub.add_parser("stats", help="print what the store holds",
                        description="Counts: comparisons, distinct pairs, evenly split pairs, ratings, "
                        "annotators and the labelling queue.")
    t.add_argument("--db", default=DEFAULT_DB, help=db_help)
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run_feedback(args) -> int:
    from .store import FeedbackStore

    cmd = args.feedback_command
    if cmd == "serve":
        from .server import serve

        store = FeedbackStore(args.db, min_score=args.min_score, max_score=args.max_score)
        console.print(f"labelling page: http://{args.host}:{args.port}/  (store {store.path}, "
                      f"scale {store.scale[0]:g}..{store.scale[1]:g})")
        serve(store, args.host, args.port)
        return 0
    if cmd == "import":
        is_new = not Path(args.db).expanduser().exists()
        try:
            return _import(args, FeedbackStore(args.db))
        except BaseException:
            if is_new:  # a failed import must not leave an empty store behind to confuse the next command
                for suffix in ("", "-wal", "-shm"):
                    Path(str(Path(args.db).expanduser()) + suffix).unlink(missing_ok=True)
            raise
    with FeedbackStore(args.db, create=False) as store:
        if cmd == "export":
            return _export(args, store)
        return _stats(args, store)


def _import(args, store) -> int:
    from rewardhub.options import parse_key_values

    source = Path(args.source)
    with store:
        if source.suffix == ".jsonl" and not args.data_arg:
            result = store.import_jsonl(source, args.annotator, args.source_tag)
        else:
            from rewardhub.data import load_rows

            rows = load_rows(args.source, args.split, parse_key_values(args.data_arg, "--data-arg") or None)
            result = store.add_comparisons(rows, args.annotator, args.source_tag or args.source,
                                           where=f"{args.source} row")
        stats = store.stats()
    console.print(f"imported {result.added} comparison(s) into {stats['path']} ({result.duplicates} already "
                  f"stored); the store now has {stats['pairs']} pair(s)")
    return 0


def _export(args, store) -> int:
    if args.output is None:
        for row in store.export_rows(args.raw):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    n = store.export_jsonl(args.output, args.raw)
    console.print(f"wrote {n} row(s) to {args.output}")
    return 0


def _stats(args, store) -> int:
    stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print_summary(f"feedback store {stats.pop('path')}", {k: _show(v) for k, v in stats.items()})
    return 0


def _show(value):
    return f"{value[0]:g}..{value[1]:g}" if isinstance(value, list) else value
