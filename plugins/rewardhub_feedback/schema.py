"""The feedback store's SQLite schema and how a connection to it is opened.

One file holds everything (comparisons, ratings, the labelling queue, the rating scale), so a store can be
copied, backed up or handed to another machine as is. WAL journaling lets the HTTP server (writing labels)
and a training process (reading them, enqueueing new items) use the file at the same time: readers never
block the writer and the writer never blocks readers. ``synchronous=FULL`` because a label is a person's
time: once the API has answered, the label survives a power cut.

The schema version is SQLite's ``user_version``; a store written by a newer rewardhub is refused rather than
misread, and an older one is upgraded in place when opened (version 1 -> 2 adds ``comparisons.outcome``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rewardhub.errors import DataError

from .validation import check_scale

SCHEMA_VERSION = 2
OUTCOMES = ("preferred", "tie", "both_bad")
DEFAULT_SCALE = (1.0, 5.0)

SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- one judgement of two replies, format 'text' (plain strings) or 'chat' (each field JSON). outcome
-- 'preferred': chosen beats rejected. 'tie' (equally good) or 'both_bad': no preference, and chosen/rejected
-- are merely the two replies as shown (A, B). Only 'preferred' rows are DPO pairs.
CREATE TABLE comparisons (
    id         INTEGER PRIMARY KEY,
    format     TEXT NOT NULL DEFAULT 'text' CHECK (format IN ('text', 'chat')),
    prompt     TEXT NOT NULL,
    chosen     TEXT NOT NULL,
    rejected   TEXT NOT NULL,
    annotator  TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    metadata   TEXT,
    outcome    TEXT NOT NULL DEFAULT 'preferred' CHECK (outcome IN ('preferred', 'tie', 'both_bad')),
    CHECK (chosen <> rejected),
    UNIQUE (format, prompt, chosen, rejected, annotator)
);
-- one annotator's score of one completion (a later rating by the same annotator replaces it)
CREATE TABLE ratings (
    id         INTEGER PRIMARY KEY,
    prompt     TEXT NOT NULL,
    completion TEXT NOT NULL,
    score      REAL NOT NULL,
    annotator  TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    metadata   TEXT,
    UNIQUE (prompt, completion, annotator)
);
-- items awaiting a label: a completion to rate, or two completions to compare (completion_b)
CREATE TABLE queue (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('rating', 'comparison')),
    prompt       TEXT NOT NULL,
    completion_a TEXT NOT NULL,
    completion_b TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    labels       INTEGER NOT NULL DEFAULT 0,
    required     INTEGER NOT NULL DEFAULT 1 CHECK (required >= 1),
    created_at   REAL NOT NULL,
    source       TEXT NOT NULL DEFAULT '',
    metadata     TEXT
);
CREATE INDEX queue_by_status ON queue (status, id);
CREATE INDEX queue_by_content ON queue (prompt, completion_a, completion_b);
"""

OUR_TABLES = {"meta", "comparisons", "ratings", "queue"}

#: In-place upgrades: ``UPGRADES[v]`` takes a store from version ``v`` to ``v + 1`` (inside one transaction).
UPGRADES = {
    1: ["ALTER TABLE comparisons ADD COLUMN outcome TEXT NOT NULL DEFAULT 'preferred' "
        "CHECK (outcome IN ('preferred', 'tie', 'both_bad'))"],
}


def connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``), WAL, FULL sync.

    ``timeout_s`` is how long a writer waits for another process's write transaction before giving up.
    """
    try:
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path} is not a usable SQLite feedback store ({exc}); pass the path of a store made "
                        "by `rewardhub feedback`, or a new file name to create one") from None
    return conn


def initialise(conn: sqlite3.Connection, path: Path, min_score: float | None = None,
               max_score: float | None = None) -> tuple[float, float]:
    """Create the schema in an empty file, or check an existing one; return the store's rating scale.

    ``min_score``/``max_score``: the rating scale wanted by the caller; None accepts whatever the store has
    (a new store: the given bounds, else 1..5). A bound that differs from an existing store's is an error:
    scores stored on one scale cannot be read on another.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0:
            if tables:
                raise DataError(f"{path} is an SQLite file with other tables ({', '.join(sorted(tables))}), not a "
                                "rewardhub feedback store; choose another --db path")
            for statement in filter(str.strip, SCHEMA.split(";")):
                conn.execute(statement)
            lo, hi = check_scale(DEFAULT_SCALE[0] if min_score is None else min_score,
                                 DEFAULT_SCALE[1] if max_score is None else max_score)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                             [("min_score", repr(float(lo))), ("max_score", repr(float(hi)))])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version > SCHEMA_VERSION:
            raise DataError(f"{path} has feedback schema version {version}, newer than this rewardhub understands "
                            f"({SCHEMA_VERSION}); upgrade rewardhub to read it")
        elif version in UPGRADES and tables >= OUR_TABLES:
            for v in range(version, SCHEMA_VERSION):
                for statement in UPGRADES[v]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION or not tables >= OUR_TABLES:
            raise DataError(f"{path} has an unknown feedback schema (version {version}, tables "
                            f"{', '.join(sorted(tables))}); it was not written by rewardhub feedback")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        stored = (float(meta["min_score"]), float(meta["max_score"]))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for name, want, have in (("min_score", min_score, stored[0]), ("max_score", max_score, stored[1])):
        if want is not None and float(want) != have:
            raise DataError(f"feedback store {path} rates on the scale {stored[0]:g}..{stored[1]:g}, but "
                            f"{name}={want:g} was asked for; leave min_score/max_score unset to use the store's "
                            "scale, or use a new store for a new scale")
    return stored
