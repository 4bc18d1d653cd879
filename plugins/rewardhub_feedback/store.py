"""The human-feedback store: comparisons, ratings and a labelling queue in one SQLite file.

Who writes what:

- annotators, through the HTTP API or the labelling page: ratings ("this completion is worth 4 of 5") and
  comparisons ("A is better than B");
- a training run (the ``human`` provider): queue items for completions nobody has labelled yet;
- ``rewardhub feedback import``: comparisons from a TRL preference dataset.

Who reads what: DPO reads :meth:`FeedbackStore.pairs` (one pair per labelled (prompt, A, B), by majority
vote); PPO/GRPO read :meth:`FeedbackStore.ratings_for` (the mean rating over annotators).

One annotator gives one judgement per item: rating the same completion again, or comparing the same two
completions again in either order, replaces that annotator's earlier label (so a mislabel can be corrected)
and never double-counts a person. A comparison's judgement is a preference ("A is better"), a ``tie`` or
``both_bad``; the last two close queue items and count towards agreement but are no preference, so
:meth:`FeedbackStore.pairs` (what DPO and reward-model training get) leaves them out.

Every write is one short ``BEGIN IMMEDIATE`` transaction, validated before
it starts, so bad input changes nothing and concurrent writers (the server and a trainer) wait for each
other instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardhub.data_files import read_jsonl
from rewardhub.errors import DataError
from rewardhub.rewards import PreferencePair

from . import agreement
from .schema import OUTCOMES, SCHEMA_VERSION, connect, initialise
from .validation import (
    check_metadata,
    check_name,
    check_score,
    check_text,
    comparison_from_row,
    decode_field,
    raw_record,
)

#: Queue-item choices for a comparison: "a"/"b" prefer that reply; "tie" and "both_bad" prefer neither.
CHOICES = {"a": "preferred", "b": "preferred", "tie": "tie", "both_bad": "both_bad"}


@dataclass(frozen=True)
class QueueItem:
    """Something awaiting a label: a completion to rate (``kind="rating"``) or two to compare."""

    id: int
    kind: str
    prompt: str
    completion_a: str
    completion_b: str
    status: str
    labels: int
    required: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "kind": self.kind, "prompt": self.prompt, "status": self.status,
             "labels": self.labels, "required": self.required, "source": self.source}
        d["completions"] = [self.completion_a] if self.kind == "rating" else [self.completion_a, self.completion_b]
        return d


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows added, and rows that were already stored (same pair, same annotator).

    ``added_by_record``: rows added per record kind (``comparison``, ``rating``, ``queue``); a TRL file has
    comparisons only, a raw export all three.
    """

    added: int
    duplicates: int
    added_by_record: Mapping[str, int] = field(default_factory=dict)


_QUEUE_COLUMNS = "id, kind, prompt, completion_a, completion_b, status, labels, required, source"


class FeedbackStore:
    """A feedback store in the SQLite file ``path``.

    Args:
        path: the database file; created (with its directory) when missing and ``create`` is true.
        create: False makes a missing file an error (reading commands must not invent an empty store).
        min_score, max_score: the rating scale. A new store takes them (default 1..5); for an existing store
            they must match its scale, or be left None.
        timeout_s: how long a write waits for another process's write to finish.

    Safe to share between threads: each thread gets its own connection to the file.
    """

    def __init__(self, path: str | Path, *, create: bool = True, min_score: float | None = None,
                 max_score: float | None = None, timeout_s: float = 30.0):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            if not create:
                raise DataError(f"no feedback store at {self.path}; create one with `rewardhub feedback import "
                                f"PAIRS --db {self.path}` or `rewardhub feedback serve --db {self.path}`")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.scale = initialise(self._conn(), self.path, min_score, max_score)
        except BaseException:
            self.close()
            raise

    # -- connections and transactions ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken up front (IMMEDIATE) so it never fails half-way on a lock upgrade."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this store opened (call when no thread is using it any more)."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- comparisons -----------------------------------------------------------------------------------------

    def add_comparison(self, prompt: Any, chosen: Any, rejected: Any, annotator: str = "", source: str = "api",
                       metadata: Mapping[str, Any] | None = None, outcome: str = "preferred") -> int:
        """Store "``chosen`` beats ``rejected``" from ``annotator``; returns the row id.

        Prompt and replies are strings, or TRL conversational message lists. Raises DataError for an empty
        field or chosen == rejected. ``outcome="tie"`` or ``"both_bad"`` records that the annotator preferred
        neither reply (``chosen``/``rejected`` are then just the two replies, A and B).
        """
        if outcome not in OUTCOMES:
            raise DataError(f"comparison: `outcome` must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "annotator": annotator,
               "source": source, "metadata": metadata}
        record = {**comparison_from_row(row, "comparison", "", "api"), "outcome": outcome}
        with self._write() as conn:
            return self._insert_comparison(conn, record)[0]

    def add_comparisons(self, rows: Iterable[Mapping[str, Any]], annotator: str = "", source: str = "import",
                        where: str = "row") -> ImportResult:
        """Store many preference rows (TRL format) in one transaction: all of them, or none if one is bad.

        ``annotator``/``source`` apply to rows without their own; other columns go to the metadata. Errors
        name rows as ``f"{where} {index}"``.
        """
        return self._import(((f"{where} {i}", row) for i, row in enumerate(rows)), annotator, source)

    def import_jsonl(self, path: str | Path, annotator: str = "", source: str | None = None) -> ImportResult:
        """Import a JSONL file of preference rows (TRL format, or a raw export); errors name the line.

        ``source`` defaults to the file name, so a later ``stats``/export tells imports apart.
        """
        path = Path(path)
        lines = read_jsonl(path)  # the core's reader: bad lines named by number, bytes that are not UTF-8 by offset
        if lines.problems:
            _raise_problems(lines.messages(), "line(s) that are not JSON")
        rows = [(f"{path.name} line {n}", row) for n, row in lines.rows]
        if not rows:
            raise DataError(f"{path} has no preference rows; expected JSON lines with prompt, chosen and rejected")
        return self._import(rows, annotator, path.name if source is None else source)

    def _import(self, rows: Iterable[tuple[str, Any]], annotator: str, source: str) -> ImportResult:
        """Validate every row, then insert them all in one transaction.

        A row with a ``record`` key is a raw export's (:meth:`export_rows` with ``raw``): the store header,
        a comparison (any outcome), a rating or a queue item, restored with its id (when that id is free),
        times and annotator. Any other row is a TRL preference row.
        """
        annotator = check_name(annotator, "annotator", "import")
        source = check_name(source, "source", "import")
        records, problems, header = [], [], None
        for where, row in rows:
            try:
                if isinstance(row, Mapping) and "record" in row:
                    kind, record = raw_record(row, where, self.scale)
                    if kind == "store":
                        header = (where, record)
                        continue
                    records.append((kind, record))
                else:
                    records.append(("comparison", comparison_from_row(row, where, annotator, source)))
            except DataError as exc:
                problems.append(str(exc))
        if header and any(kind == "rating" for kind, _ in records):
            where, h = header
            if (h["min_score"], h["max_score"]) != self.scale:
                problems.insert(0, f"{where}: the export rates on the scale {h['min_score']:g}..{h['max_score']:g} "
                                f"but this store on {self.scale[0]:g}..{self.scale[1]:g}; import it into a new "
                                "store (which takes the export's scale)")
        if problems:
            _raise_problems(problems, "bad preference row(s)" if header is None and not any(
                kind != "comparison" for kind, _ in records) else "bad row(s)")
        added: dict[str, int] = {}
        with self._write() as conn:
            for kind, record in records:
                insert = {"comparison": self._insert_comparison, "rating": self._insert_rating,
                          "queue": self._insert_queue_record}[kind]
                added[kind] = added.get(kind, 0) + insert(conn, record)[1]
        total = sum(added.values())
        return ImportResult(total, len(records) - total, {k: v for k, v in added.items() if v})

    def export_jsonl(self, path: str | Path, raw: bool = False) -> int:
        """Write :meth:`export_rows` to ``path`` (atomically: a temporary file renamed); returns the row count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        n = 0
        with tmp.open("w", encoding="utf-8") as f:
            for row in self.export_rows(raw):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
        return n

    def _insert_comparison(self, conn: sqlite3.Connection, r: Mapping[str, Any]) -> tuple[int, bool]:
        """Insert one validated record; (row id, whether it is new).

        The same judgement already stored is kept (not new); a different judgement of the same two replies by
        the same annotator (the reverse preference, a tie, ...) is replaced.
        """
        outcome = r.get("outcome", "preferred")
        key = (r["format"], r["prompt"], r["chosen"], r["rejected"], r["annotator"])
        mine = conn.execute(
            "SELECT id, chosen, outcome FROM comparisons WHERE format = ? AND prompt = ? AND annotator = ? AND "
            "((chosen = ? AND rejected = ?) OR (chosen = ? AND rejected = ?))",
            (r["format"], r["prompt"], r["annotator"], r["chosen"], r["rejected"], r["rejected"],
             r["chosen"])).fetchall()
        for row_id, chosen, stored in mine:
            if stored == outcome and (outcome != "preferred" or chosen == r["chosen"]):
                return row_id, False
        conn.executemany("DELETE FROM comparisons WHERE id = ?", [(m[0],) for m in mine])
        cur = conn.execute(
            "INSERT INTO comparisons (id, format, prompt, chosen, rejected, annotator, created_at, source, metadata, "
            "outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_free_id(conn, "comparisons", r.get("id")), *key,
             r["created_at"] if r["created_at"] is not None else time.time(), r["source"], r["metadata"], outcome))
        if r["format"] == "text":
            self._close_queue_items(conn, "comparison", r["prompt"], r["chosen"], r["rejected"])
        return cur.lastrowid, True

    def comparison_votes(self, prompt: str, a: str, b: str) -> tuple[int, int]:
        """(annotators who preferred ``a`` over ``b``, annotators who preferred ``b``) for plain-text items."""
        return self.judgements(prompt, a, b)[:2]

    def judgements(self, prompt: str, a: str, b: str) -> tuple[int, int, int]:
        """(preferred ``a``, preferred ``b``, preferred neither: tie or both bad) for plain-text items."""
        rows = self._conn().execute(
            "SELECT CASE WHEN outcome <> 'preferred' THEN 2 WHEN chosen = ? THEN 1 ELSE 0 END AS k, COUNT(*) "
            "FROM comparisons WHERE format = 'text' AND prompt = ? AND "
            "((chosen = ? AND rejected = ?) OR (chosen = ? AND rejected = ?)) GROUP BY k",
            (a, prompt, a, b, b, a)).fetchall()
        votes = dict(rows)
        return int(votes.get(1, 0)), int(votes.get(0, 0)), int(votes.get(2, 0))

    def pairs(self) -> list[PreferencePair]:
        """One preference pair per labelled (prompt, {A, B}), in the direction most annotators chose.

        Duplicates collapse into one pair; a pair whose votes are split evenly is left out (no majority, no
        preference). Ties and both-bad judgements are not votes either way (they carry no preference: DPO and
        a Bradley-Terry reward model have nothing to learn from them), so they are left out too.
        ``meta`` carries ``votes`` (for the majority) and ``against``.
        """
        rows = self._conn().execute(
            "SELECT format, prompt, chosen, rejected, COUNT(*), MIN(id) FROM comparisons WHERE outcome = 'preferred' "
            "GROUP BY format, prompt, chosen, rejected ORDER BY MIN(id)").fetchall()
        votes = {(f, p, c, r): n for f, p, c, r, n, _ in rows}
        out = []
        for f, p, c, r, n, _ in rows:
            against = votes.get((f, p, r, c), 0)
            if n > against:
                meta = {"votes": n, "against": against}
                out.append(PreferencePair(decode_field(f, p), decode_field(f, c), decode_field(f, r), meta=meta))
        return out

    # -- ratings ---------------------------------------------------------------------------------------------

    def add_rating(self, prompt: str, completion: str, score: Any, annotator: str = "", source: str = "api",
                   metadata: Mapping[str, Any] | None = None) -> int:
        """Store ``annotator``'s rating of a completion (replacing their earlier one); returns the row id.

        An empty completion may be rated (a policy can produce one; it deserves a low score); the prompt must
        not be empty, and the score must lie on the store's scale.
        """
        where = "rating"
        prompt = check_text(prompt, "prompt", where)
        completion = check_text(completion, "completion", where, allow_empty=True)
        value = check_score(score, self.scale, where)
        values = (prompt, completion, value, check_name(annotator, "annotator", where), time.time(),
                  check_name(source, "source", where), check_metadata(metadata, where))
        with self._write() as conn:
            conn.execute(
                "INSERT INTO ratings (prompt, completion, score, annotator, created_at, source, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (prompt, completion, annotator) DO UPDATE SET "
                "score = excluded.score, created_at = excluded.created_at, source = excluded.source, "
                "metadata = excluded.metadata", values)
            row_id = conn.execute("SELECT id FROM ratings WHERE prompt = ? AND completion = ? AND annotator = ?",
                                  (values[0], values[1], values[3])).fetchone()[0]
            self._close_queue_items(conn, "rating", prompt, completion, "")
        return row_id

    def _insert_rating(self, conn: sqlite3.Connection, r: Mapping[str, Any]) -> tuple[int, bool]:
        """Insert a raw export's rating; one already stored for that completion and annotator is kept."""
        found = conn.execute("SELECT id FROM ratings WHERE prompt = ? AND completion = ? AND annotator = ?",
                             (r["prompt"], r["completion"], r["annotator"])).fetchone()
        if found:
            return found[0], False
        cur = conn.execute(
            "INSERT INTO ratings (id, prompt, completion, score, annotator, created_at, source, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (_free_id(conn, "ratings", r["id"]), r["prompt"], r["completion"], r["score"], r["annotator"],
             r["created_at"], r["source"], r["metadata"]))
        self._close_queue_items(conn, "rating", r["prompt"], r["completion"], "")
        return cur.lastrowid, True

    def rating(self, prompt: str, completion: str) -> tuple[float, int] | None:
        """(mean score over annotators, number of annotators), or None when nobody rated it."""
        return self.ratings_for([(prompt, completion)]).get((prompt, completion))

    def ratings_for(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, int]]:
        """Mean rating and count for each rated (prompt, completion) among ``keys``; unrated ones are absent."""
        conn, out = self._conn(), {}
        for key in dict.fromkeys(keys):
            mean, n = conn.execute("SELECT AVG(score), COUNT(*) FROM ratings WHERE prompt = ? AND completion = ?",
                                   key).fetchone()
            if n:
                out[key] = (float(mean), int(n))
        return out

    # -- the labelling queue ---------------------------------------------------------------------------------

    def enqueue(self, prompt: str, completions: Sequence[str], source: str = "api", required: int = 1,
                metadata: Mapping[str, Any] | None = None) -> int:
        """Ask annotators to rate one completion, or compare two; returns the queue item id.

        An identical open item (same prompt and completions, in either order) is reused, so a trainer that
        meets the same unlabelled completion twice does not queue it twice.
        """
        return self.enqueue_many([(prompt, completions)], source, required, metadata)[0]

    def enqueue_many(self, items: Sequence[tuple[str, Sequence[str]]], source: str = "trainer", required: int = 1,
                     metadata: Mapping[str, Any] | None = None) -> list[int]:
        """:meth:`enqueue` for several items in one transaction (all validated first)."""
        name = (lambda i: f"queue item {i}") if len(items) > 1 else (lambda i: "queue item")
        checked = [self._queue_values(prompt, completions, name(i)) for i, (prompt, completions) in enumerate(items)]
        if isinstance(required, bool) or not isinstance(required, int) or required < 1:
            raise DataError(f"queue: `required` (labels needed to close an item) must be an integer >= 1, got "
                            f"{required!r}")
        source = check_name(source, "source", "queue")
        meta = check_metadata(metadata, "queue")
        with self._write() as conn:
            return [self._insert_queue_item(conn, *values, required, source, meta) for values in checked]

    def enqueue_items(self, items: Sequence[Mapping[str, Any]], source: str = "api") -> list[int]:
        """Queue many items, each with its own settings, in one transaction: all of them or (one bad) none.

        Each item: ``prompt``, ``completions`` (one to rate, two to compare), optional ``required``,
        ``source`` (default ``source``), ``metadata``, and ``where`` (how errors name it).
        """
        checked, problems = [], []
        for i, item in enumerate(items):
            where = item.get("where") or f"queue item {i}"
            try:
                values = self._queue_values(item.get("prompt"), item.get("completions"), where)
                required = item.get("required", 1)
                if isinstance(required, bool) or not isinstance(required, int) or required < 1:
                    raise DataError(f"{where}: `required` (labels needed to close an item) must be an integer >= 1, "
                                    f"got {required!r}")
                checked.append((*values, required, check_name(item.get("source", source), "source", where),
                                check_metadata(item.get("metadata"), where)))
            except DataError as exc:
                problems.append(str(exc))
        if problems:
            _raise_problems(problems, "bad queue item(s)", "queued")
        with self._write() as conn:
            return [self._insert_queue_item(conn, *values) for values in checked]

    def _insert_queue_item(self, conn: sqlite3.Connection, kind: str, prompt: str, a: str, b: str, required: int,
                           source: str, meta: str | None) -> int:
        """A new open item, or the id of the identical open one (either order)."""
        found = conn.execute(
            "SELECT id FROM queue WHERE status = 'open' AND kind = ? AND prompt = ? AND "
            "((completion_a = ? AND completion_b = ?) OR (completion_a = ? AND completion_b = ?))",
            (kind, prompt, a, b, b, a)).fetchone()
        if found:
            return found[0]
        cur = conn.execute(
            "INSERT INTO queue (kind, prompt, completion_a, completion_b, required, created_at, source, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (kind, prompt, a, b, required, time.time(), source, meta))
        self._close_queue_items(conn, kind, prompt, a, b)  # already labelled: done at once
        return cur.lastrowid

    def _insert_queue_record(self, conn: sqlite3.Connection, r: Mapping[str, Any]) -> tuple[int, bool]:
        """Insert a raw export's queue item as it was (status, labels, time); the same item is not doubled."""
        found = conn.execute("SELECT id FROM queue WHERE kind = ? AND prompt = ? AND completion_a = ? AND "
                             "completion_b = ? AND created_at = ?",
                             (r["kind"], r["prompt"], r["completion_a"], r["completion_b"], r["created_at"])).fetchone()
        if found:
            return found[0], False
        cur = conn.execute(
            "INSERT INTO queue (id, kind, prompt, completion_a, completion_b, status, labels, required, created_at, "
            "source, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_free_id(conn, "queue", r["id"]), r["kind"], r["prompt"], r["completion_a"], r["completion_b"],
             r["status"], r["labels"], r["required"], r["created_at"], r["source"], r["metadata"]))
        if r["status"] == "open":  # labels this store holds already count
            self._close_queue_items(conn, r["kind"], r["prompt"], r["completion_a"], r["completion_b"])
        return cur.lastrowid, True

    @staticmethod
    def _queue_values(prompt: Any, completions: Any, where: str) -> tuple[str, str, str, str]:
        if isinstance(completions, str) or not isinstance(completions, Sequence) or len(completions) not in (1, 2):
            raise DataError(f"{where}: `completions` must be a list of one completion (to rate) or two (to "
                            f"compare), got {completions!r:.80}")
        prompt = check_text(prompt, "prompt", where)
        texts = [check_text(c, f"completions[{i}]", where, allow_empty=len(completions) == 1)
                 for i, c in enumerate(completions)]
        if len(texts) == 2 and texts[0] == texts[1]:
            raise DataError(f"{where}: the two completions are identical; there is nothing to compare")
        if len(texts) == 1:
            return "rating", prompt, texts[0], ""
        return "comparison", prompt, texts[0], texts[1]

    def _close_queue_items(self, conn: sqlite3.Connection, kind: str, prompt: str, a: str, b: str) -> None:
        """Recount the labels of open queue items with this content; items with enough labels are done."""
        if kind == "rating":
            labels = conn.execute("SELECT COUNT(*) FROM ratings WHERE prompt = ? AND completion = ?",
                                  (prompt, a)).fetchone()[0]
            match, args = "completion_a = ? AND completion_b = ''", (a,)
        else:
            labels = conn.execute(
                "SELECT COUNT(DISTINCT annotator) FROM comparisons WHERE format = 'text' AND prompt = ? AND "
                "((chosen = ? AND rejected = ?) OR (chosen = ? AND rejected = ?))", (prompt, a, b, b, a)).fetchone()[0]
            match, args = "((completion_a = ? AND completion_b = ?) OR (completion_a = ? AND completion_b = ?))", (
                a, b, b, a)
        conn.execute(f"UPDATE queue SET labels = ?, status = CASE WHEN ? >= required THEN 'done' ELSE 'open' END "
                     f"WHERE status = 'open' AND kind = ? AND prompt = ? AND {match}",
                     (labels, labels, kind, prompt, *args))

    def next_open(self, annotator: str = "", after: int = 0) -> QueueItem | None:
        """The oldest open item (id > ``after``) that ``annotator`` has not labelled yet, or None."""
        annotator = check_name(annotator, "annotator", "next item")
        row = self._conn().execute(
            f"SELECT {_QUEUE_COLUMNS} FROM queue q WHERE status = 'open' AND id > ? AND NOT EXISTS ("
            "  SELECT 1 FROM ratings r WHERE q.kind = 'rating' AND r.prompt = q.prompt AND "
            "  r.completion = q.completion_a AND r.annotator = ?) AND NOT EXISTS ("
            "  SELECT 1 FROM comparisons c WHERE q.kind = 'comparison' AND c.format = 'text' AND "
            "  c.prompt = q.prompt AND c.annotator = ? AND ((c.chosen = q.completion_a AND "
            "  c.rejected = q.completion_b) OR (c.chosen = q.completion_b AND c.rejected = q.completion_a))) "
            "ORDER BY id LIMIT 1", (int(after), annotator, annotator)).fetchone()
        return QueueItem(*row) if row else None

    def get_item(self, item_id: int) -> QueueItem:
        row = self._conn().execute(f"SELECT {_QUEUE_COLUMNS} FROM queue WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise DataError(f"queue item {item_id} does not exist; fetch one from /api/next")
        return QueueItem(*row)

    def label_item(self, item_id: int, annotator: str, *, score: Any = None, choice: str | None = None) -> int:
        """Label queue item ``item_id``: a ``score`` for a rating item; for a comparison, ``choice`` "a" or "b"
        (that reply is better), "tie" (equally good) or "both_bad" (neither is acceptable)."""
        item = self.get_item(item_id)
        if item.kind == "rating":
            if score is None:
                raise DataError(f"queue item {item_id} asks for a rating; send a `score` on the scale "
                                f"{self.scale[0]:g}..{self.scale[1]:g}")
            return self.add_rating(item.prompt, item.completion_a, score, annotator, source="queue")
        if choice not in CHOICES:
            raise DataError(f"queue item {item_id} asks for a comparison; send choice `a` or `b` (that reply is "
                            f"better), `tie` or `both_bad`, got {choice!r}")
        win, lose = (item.completion_b, item.completion_a) if choice == "b" else (item.completion_a,
                                                                                   item.completion_b)
        return self.add_comparison(item.prompt, win, lose, annotator, source="queue", outcome=CHOICES[choice])

    def queue_counts(self) -> dict[str, int]:
        rows = dict(self._conn().execute("SELECT status, COUNT(*) FROM queue GROUP BY status").fetchall())
        return {"open": int(rows.get("open", 0)), "done": int(rows.get("done", 0))}

    # -- import / export / stats -----------------------------------------------------------------------------

    def export_rows(self, raw: bool = False) -> Iterator[dict[str, Any]]:
        """Rows in TRL's preference format, or the whole store.

        Default: :meth:`pairs` (one row per pair, majority direction; ties and both-bad left out) with
        ``prompt``, ``chosen``, ``rejected``: what DPO or ``train-rm`` train on. ``raw``: a lossless backup
        that :meth:`import_jsonl` restores, read in one transaction (a consistent snapshot): a header
        ``{"record": "store", "schema_version", "min_score", "max_score"}``, then every comparison
        (``record: "comparison"``, with ``outcome``; a tie or both-bad names its replies ``completion_a`` and
        ``completion_b``, so no reader mistakes it for a preference), rating (``record: "rating"``) and queue
        item (``record: "queue"``), each with its id, annotator, created_at, source and metadata.
        """
        if not raw:
            for p in self.pairs():
                yield {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            return
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            comparisons = conn.execute("SELECT id, format, prompt, chosen, rejected, outcome, annotator, created_at, "
                                       "source, metadata FROM comparisons ORDER BY id").fetchall()
            ratings = conn.execute("SELECT id, prompt, completion, score, annotator, created_at, source, metadata "
                                   "FROM ratings ORDER BY id").fetchall()
            queue = conn.execute("SELECT id, kind, prompt, completion_a, completion_b, status, labels, required, "
                                 "created_at, source, metadata FROM queue ORDER BY id").fetchall()
        finally:
            conn.execute("COMMIT")
        yield {"record": "store", "schema_version": SCHEMA_VERSION, "min_score": self.scale[0],
               "max_score": self.scale[1]}
        for row_id, f, p, c, r, outcome, annotator, created, source, meta in comparisons:
            names = ("chosen", "rejected") if outcome == "preferred" else ("completion_a", "completion_b")
            yield {"record": "comparison", "id": row_id, "outcome": outcome, "prompt": decode_field(f, p),
                   names[0]: decode_field(f, c), names[1]: decode_field(f, r), "annotator": annotator,
                   "created_at": created, "source": source, "metadata": _loads(meta)}
        for row_id, p, completion, score, annotator, created, source, meta in ratings:
            yield {"record": "rating", "id": row_id, "prompt": p, "completion": completion, "score": score,
                   "annotator": annotator, "created_at": created, "source": source, "metadata": _loads(meta)}
        for row_id, kind, p, a, b, status, labels, required, created, source, meta in queue:
            yield {"record": "queue", "id": row_id, "kind": kind, "prompt": p,
                   "completions": [a] if kind == "rating" else [a, b], "status": status, "labels": labels,
                   "required": required, "created_at": created, "source": source, "metadata": _loads(meta)}

    def counts(self) -> dict[str, int]:
        """Cheap counts for the labelling page (no grouping, unlike :meth:`stats`)."""
        conn = self._conn()
        return {"comparisons": conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0],
                "ratings": conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0],
                "queue_open": self.queue_counts()["open"], "path": str(self.path)}

    def stats(self, per_item: bool = False) -> dict[str, Any]:
        """Counts and agreement for `rewardhub feedback stats` and ``GET /api/stats``.

        ``comparisons`` counts preferences; ``ties`` and ``both_bad`` the judgements that preferred neither
        reply. ``agreement`` (see :mod:`.agreement`) covers comparisons and ratings separately; ``per_item``
        adds each item judged by 2+ annotators with its votes and majority share.
        """
        conn = self._conn()
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731 - a local shorthand
        groups = conn.execute("SELECT format, prompt, chosen, rejected, COUNT(*) FROM comparisons "
                              "WHERE outcome = 'preferred' GROUP BY format, prompt, chosen, rejected").fetchall()
        votes = {(f, p, c, r): n for f, p, c, r, n in groups}
        pairs = sum(1 for (f, p, c, r), n in votes.items() if n > votes.get((f, p, r, c), 0))
        split = sum(1 for (f, p, c, r), n in votes.items() if n == votes.get((f, p, r, c), 0)) // 2
        outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM comparisons GROUP BY outcome").fetchall())
        annotators = one("SELECT COUNT(*) FROM (SELECT annotator FROM comparisons UNION SELECT annotator FROM ratings)")
        queue = self.queue_counts()
        out = {"path": str(self.path), "schema_version": SCHEMA_VERSION, "scale": list(self.scale),
               "comparisons": int(outcomes.get("preferred", 0)), "ties": int(outcomes.get("tie", 0)),
               "both_bad": int(outcomes.get("both_bad", 0)), "pairs": pairs, "split_pairs": split,
               "prompts": one("SELECT COUNT(DISTINCT prompt) FROM comparisons"),
               "ratings": one("SELECT COUNT(*) FROM ratings"),
               "rated_completions": one("SELECT COUNT(*) FROM (SELECT 1 FROM ratings GROUP BY prompt, completion)"),
               "annotators": annotators, "queue_open": queue["open"], "queue_done": queue["done"]}
        compared, rated = self._labels_by_item()
        out["agreement"] = {"comparisons": agreement.summarise(compared), "ratings": agreement.summarise(rated)}
        if per_item:
            out["items"] = [
                {"kind": "comparison", "prompt": decode_field(f, p), "a": decode_field(f, a),
                 "b": decode_field(f, b), "annotators": sum(c.values()), "votes": dict(sorted(c.items())),
                 "majority_share": share} for (f, p, a, b), c, share in agreement.per_item(compared)] + [
                {"kind": "rating", "prompt": p, "completion": completion, "annotators": sum(c.values()),
                 "votes": {f"{k:g}": v for k, v in sorted(c.items())}, "majority_share": share}
                for (p, completion), c, share in agreement.per_item(rated)]
        return out

    def _labels_by_item(self) -> tuple[dict, dict]:
        """``{item: {annotator: category}}`` for comparisons (A is the reply that sorts first; categories
        ``a``, ``b``, ``tie``, ``both_bad``) and for ratings (categories: the scores)."""
        conn = self._conn()
        compared: dict[tuple, dict[str, str]] = {}
        for f, p, c, r, outcome, annotator in conn.execute(
                "SELECT format, prompt, chosen, rejected, outcome, annotator FROM comparisons"):
            a, b = sorted((c, r))
            category = outcome if outcome != "preferred" else ("a" if c == a else "b")
            compared.setdefault((f, p, a, b), {})[annotator] = category
        rated: dict[tuple, dict[str, float]] = {}
        for p, completion, score, annotator in conn.execute(
                "SELECT prompt, completion, score, annotator FROM ratings"):
            rated.setdefault((p, completion), {})[annotator] = score
        return compared, rated


def raw_header(path: Path) -> dict[str, float] | None:
    """The store header of a raw export (its first line), or None when ``path`` does not start with one."""
    try:
        with path.open("rb") as f:
            row = json.loads(f.readline() or b"null")
    except (OSError, ValueError):
        return None  # the import itself reports unreadable files, line by line
    if not (isinstance(row, dict) and row.get("record") == "store"):
        return None
    lo, hi = row.get("min_score"), row.get("max_score")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    return {"min_score": float(lo), "max_score": float(hi)} if ok else None


def _free_id(conn: sqlite3.Connection, table: str, row_id: Any) -> int | None:
    """``row_id`` when the table has no row with it (a restore keeps ids), else None (SQLite picks one)."""
    if row_id is None or conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone():
        return None
    return row_id


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _raise_problems(problems: list[str], what: str, done: str = "imported") -> None:
    shown = "\n  - ".join(problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    again = {"imported": "import", "queued": "queue them"}.get(done, "try")
    raise DataError(f"{len(problems)} {what}; nothing was {done}. Fix them and {again} again:\n  - {shown}{more}")
