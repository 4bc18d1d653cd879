"""``rewardhub feedback``, the feedback plugin's command: manage a human-feedback store (the ``human`` reward
provider's SQLite file). Registered through ``rewardhub_register_commands`` in :mod:`rewardhub_feedback`.

``serve`` starts the labelling page and HTTP API; ``import`` loads preference pairs (TRL's format) from a
JSONL file, any data file or a registered task; ``queue`` puts items to label in the queue, from a file or
sampled from a model; ``export`` writes the pairs back out as JSONL; ``stats`` prints what the store holds
and how much annotators agree. The store module is imported lazily so ``rewardhub --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rewardhub.cli.common import console, print_summary
from rewardhub.config import add_flags, load_config, setting

from .provider import DEFAULT_DB  # the human provider's default: both meet in the directory you run from

FEEDBACK_HELP = "human-feedback store: serve the labelling page/API, import, queue, export, stats"


@dataclass
class StoreArgs:
    db: str = setting(DEFAULT_DB, "the store's SQLite file")


@dataclass
class FeedbackServeConfig(StoreArgs):
    host: str = setting("127.0.0.1", "interface to listen on; any but loopback needs a token")
    port: int = setting(8765, "port")
    token: str | None = setting(None, "require this token (Authorization: Bearer, or /?token= for the page); "
                                "default: the REWARDHUB_FEEDBACK_TOKEN environment variable (safer: not in `ps`)")
    max_body_kb: float = setting(256.0, "largest request body accepted, in KB (larger: 413)")
    min_score: float | None = setting(None, "lowest rating of a NEW store (none: 1)")
    max_score: float | None = setting(None, "highest rating of a NEW store (none: 5)")


@dataclass
class FeedbackImportConfig(StoreArgs):
    source: str = setting("", "a .jsonl file, a .json/.parquet/.csv file, or a task name", positional=True)
    annotator: str = setting("", "annotator name for rows without one (empty: anonymous)")
    source_tag: str | None = setting(None, "source recorded with each row (none: SOURCE's name)")
    split: str = setting("train", "split of a task or dataset")
    data_args: dict = setting({}, "task option as key=value, repeatable (e.g. size=64)", flag="--data-arg")


@dataclass
class FeedbackExportConfig(StoreArgs):
    output: str | None = setting(None, "output file (none: standard output)", short="-o")
    raw: bool = setting(False, "the whole store (comparisons, ratings, queue) with ids, annotators, times: a backup")


@dataclass
class FeedbackQueueConfig(StoreArgs):
    file: str = setting("", "a .jsonl/.json/.parquet/.csv file (or task) of items: prompt plus `completions` (one "
                        "to rate, two to compare), `completion`, or `completion_a`/`completion_b`", positional=True)
    model: str | None = setting(None, "sample the completions from this model (hub id, directory, "
                                "builtin:tiny-llama) for the prompts of --data")
    data: str | None = setting(None, "prompts for --model: a data file or task with a `prompt` column")
    split: str = setting("train", "split of a task or dataset")
    data_args: dict = setting({}, "task option as key=value, repeatable (e.g. size=64)", flag="--data-arg")
    num_generations: int = setting(2, "completions sampled per prompt: 1 (rate it) or 2 (compare them)")
    limit: int = setting(0, "queue at most this many prompts or rows (0: all)")
    max_new_tokens: int = setting(128, "longest sampled completion, in tokens")
    temperature: float = setting(1.0, "sampling temperature (> 0: two samples must be able to differ)")
    top_p: float = setting(1.0, "nucleus sampling")
    seed: int = setting(0, "sampling seed")
    batch_size: int = setting(16, "prompts per generation batch")
    dtype: str = setting("auto", "model dtype: auto, float32, bfloat16, float16")
    labels: int = setting(1, "labels (distinct annotators) an item needs before it leaves the queue; a row's own "
                          "`required` wins")
    source_tag: str | None = setting(None, "source recorded with each item (none: the file's or model's name)")


@dataclass
class FeedbackStatsConfig(StoreArgs):
    json: bool = setting(False, "print JSON instead of a table")
    per_item: bool = setting(False, "also list every item judged by 2+ annotators with its votes")


SUBCOMMANDS = {"serve": FeedbackServeConfig, "import": FeedbackImportConfig, "queue": FeedbackQueueConfig,
               "export": FeedbackExportConfig, "stats": FeedbackStatsConfig}


def add_feedback_parser(sub):
    p = sub.add_parser(
        "feedback", help=FEEDBACK_HELP,
        description="Manage a human-feedback store, the SQLite file the `human` reward provider reads: "
        "`rewardhub train --algo dpo --reward=human` trains on its comparisons, and "
        "`rewardhub train --reward=human` rewards completions with its ratings (queueing unrated ones).")
    fsub = p.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")
    s = fsub.add_parser("serve", help="serve the labelling page and the HTTP API",
                        description="Serve the labelling page (GET /) and the JSON API (/api/...) for a store, "
                        "creating the store if it does not exist. Stop with Ctrl-C. Listening on anything but a "
                        "loopback address needs a token (--token or REWARDHUB_FEEDBACK_TOKEN); a token given is "
                        "enforced on loopback too.")
    i = fsub.add_parser("import", help="import preference pairs (prompt/chosen/rejected)",
                        description="Import preference rows in TRL's format (prompt, chosen, rejected; strings or "
                        "message lists; without a prompt, the implicit prompt is extracted as the longest common "
                        "prefix of chosen and rejected) into a store, creating it if needed. SOURCE is a .jsonl file "
                        "(errors name the line), another data file, or a registered task such as "
                        "arithmetic-preferences. Extra columns are kept as metadata. All rows are checked first: one "
                        "bad row imports nothing.")
    q = fsub.add_parser("queue", help="queue items to label: from a file, or sampled from a model",
                        description="Put items in the labelling queue: from FILE (rows with a prompt and "
                        "`completions`: one to rate or two to compare; or `completion`; or `completion_a` and "
                        "`completion_b`; optional `required`, `source`, `metadata`, other columns kept as metadata), "
                        "or sampled with --model M --data D --num-generations 2 (two samples per prompt to compare; "
                        "1: one to rate). All rows are checked first: one bad row queues nothing. An identical open "
                        "item is not queued twice.")
    e = fsub.add_parser("export", help="write the pairs as JSONL (TRL preference format)",
                        description="Write the store's pairs as JSONL with prompt/chosen/rejected, one row per "
                        "labelled pair in the majority's direction (what DPO trains on). --raw writes the whole "
                        "store, a lossless backup that `import` restores: a header with the rating scale, then "
                        "every comparison (ties and both-bad included), rating and queue item with its id, "
                        "annotator, time, source and metadata.")
    t = fsub.add_parser("stats", help="print what the store holds",
                        description="Counts (comparisons, ties, both-bad, distinct pairs, evenly split pairs, "
                        "ratings, annotators, the labelling queue) and agreement: over items judged by 2+ "
                        "annotators, the mean share of annotators in each item's majority, Fleiss' kappa, and "
                        "Cohen's kappa per pair of annotators (comparisons and ratings separately).")
    for parser, name in ((s, "serve"), (i, "import"), (q, "queue"), (e, "export"), (t, "stats")):
        add_flags(parser, SUBCOMMANDS[name])
    for action in q._actions:  # FILE is optional: --model --data queue sampled completions instead
        if action.dest == "file":
            action.nargs, action.required, action.default = "?", False, argparse.SUPPRESS
    return p


def run_feedback(args) -> int:
    from .store import FeedbackStore

    cmd = args.feedback_command
    options = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "feedback_command"})
    cfg = load_config(SUBCOMMANDS[cmd], options)
    if cmd == "serve":
        from .security import TOKEN_ENV, check_bind, check_token
        from .server import serve

        token = check_token(cfg.token if cfg.token is not None else os.environ.get(TOKEN_ENV))
        check_bind(cfg.host, token)  # before the store is created: a refused serve leaves nothing behind
        store = FeedbackStore(cfg.db, min_score=cfg.min_score, max_score=cfg.max_score)
        access = ("token required: open the page once with ?token=TOKEN, send API calls with "
                  "`Authorization: Bearer TOKEN`" if token else "no token: open to programs on this machine")
        console.print(f"labelling page: http://{cfg.host}:{cfg.port}/  (store {store.path}, "
                      f"scale {store.scale[0]:g}..{store.scale[1]:g}; {access})")
        serve(store, cfg.host, cfg.port, token=token, max_body_kb=cfg.max_body_kb)
        return 0
    if cmd == "import":
        from .store import raw_header

        is_new = not Path(cfg.db).expanduser().exists()
        # a raw export restored into a new store brings its rating scale along
        header = raw_header(Path(cfg.source)) if is_new and cfg.source.endswith(".jsonl") else None
        scale = (header["min_score"], header["max_score"]) if header else (None, None)
        try:
            return _import(cfg, FeedbackStore(cfg.db, min_score=scale[0], max_score=scale[1]))
        except BaseException:
            if is_new:  # a failed import must not leave an empty store behind to confuse the next command
                for suffix in ("", "-wal", "-shm"):
                    Path(str(Path(cfg.db).expanduser()) + suffix).unlink(missing_ok=True)
            raise
    if cmd == "queue":
        with FeedbackStore(cfg.db) as store:
            return _queue(cfg, store)
    with FeedbackStore(cfg.db, create=False) as store:
        if cmd == "export":
            return _export(cfg, store)
        return _stats(cfg, store)


def _import(cfg: FeedbackImportConfig, store) -> int:
    source = Path(cfg.source)
    with store:
        if source.suffix == ".jsonl" and not cfg.data_args:
            result = store.import_jsonl(source, cfg.annotator, cfg.source_tag)
        else:
            from rewardhub.data import load_rows

            rows = load_rows(cfg.source, cfg.split, cfg.data_args or None)
            result = store.add_comparisons(rows, cfg.annotator, cfg.source_tag or cfg.source,
                                           where=f"{cfg.source} row")
        stats = store.stats()
    kinds = result.added_by_record
    if set(kinds) - {"comparison"}:  # a raw export: say what each table got
        what = ", ".join(f"{n} {k}(s)" for k, n in kinds.items())
        console.print(f"imported {what} into {stats['path']} ({result.duplicates} already stored); the store "
                      f"now has {stats['pairs']} pair(s), {stats['ratings']} rating(s), {stats['queue_open']} open "
                      "queue item(s)")
        return 0
    console.print(f"imported {result.added} comparison(s) into {stats['path']} ({result.duplicates} already "
                  f"stored); the store now has {stats['pairs']} pair(s)")
    return 0


def _queue(cfg: FeedbackQueueConfig, store) -> int:
    from rewardhub.errors import ConfigError

    from .queueing import items_from_model, items_from_rows

    if bool(cfg.file) == bool(cfg.model):
        raise ConfigError("feedback queue: give FILE (items with their completions) or --model M --data D (sample "
                          "them), not both and not neither")
    if cfg.model:
        if not cfg.data:
            raise ConfigError("feedback queue --model needs --data: the prompts to sample completions for")
        items, skipped = items_from_model(cfg)
        source = cfg.source_tag or f"model:{cfg.model}"
    else:
        from rewardhub.data import load_rows

        items, skipped = items_from_rows(load_rows(cfg.file, cfg.split, cfg.data_args or None), cfg.file,
                                         cfg.limit, cfg.labels)
        source = cfg.source_tag or Path(cfg.file).name
    before = store.queue_counts()["open"]
    ids = store.enqueue_items(items, source)
    kinds = {k: sum(1 for i in items if len(i["completions"]) == n) for k, n in (("rate", 1), ("compare", 2))}
    new = store.queue_counts()["open"] - before
    note = f"; {skipped} skipped ({'both samples identical' if cfg.model else 'nothing to label'})" if skipped else ""
    console.print(f"queued {new} new item(s) in {store.path} ({kinds['rate']} to rate, {kinds['compare']} to "
                  f"compare; {len(ids) - new} already open or labelled{note}); label them on "
                  f"`rewardhub feedback serve --db {store.path}`")
    return 0


def _export(cfg: FeedbackExportConfig, store) -> int:
    if cfg.output is None:
        for row in store.export_rows(cfg.raw):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    n = store.export_jsonl(Path(cfg.output), cfg.raw)
    console.print(f"wrote {n} row(s) to {cfg.output}")
    return 0


def _stats(cfg: FeedbackStatsConfig, store) -> int:
    stats = store.stats(per_item=cfg.per_item)
    if cfg.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    agreement, items = stats.pop("agreement"), stats.pop("items", None)
    for kind, a in agreement.items():
        stats[f"agreement: {kind}"] = _agreement_line(a)
        for pair in a["cohen_kappa"]:
            names = " / ".join(n or "(anonymous)" for n in pair["annotators"])
            stats[f"  {kind}: Cohen's kappa {names}"] = (
                f"{_num(pair['kappa'])} over {pair['items']} item(s)")
    print_summary(f"feedback store {stats.pop('path')}", {k: _show(v) for k, v in stats.items()})
    if items is not None:
        from rewardhub.cli.common import print_table

        print_table("items judged by 2+ annotators", ["kind", "prompt", "votes", "annotators", "majority share"],
                    [(i["kind"], _clip(i["prompt"]), ", ".join(f"{k}: {v}" for k, v in i["votes"].items()),
                      i["annotators"], f"{i['majority_share']:.2f}") for i in items])
    return 0


def _agreement_line(a: dict) -> str:
    if not a["items"]:
        return "no item judged by 2+ annotators"
    return (f"{a['items']} item(s) with 2+ annotators; majority share {a['mean_majority_share']:.3f}; "
            f"Fleiss' kappa {_num(a['fleiss_kappa'])}")


def _num(value) -> str:
    return "undefined (one category only)" if value is None else f"{value:.3f}"


def _clip(text, n: int = 50) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _show(value):
    return f"{value[0]:g}..{value[1]:g}" if isinstance(value, list) else value
