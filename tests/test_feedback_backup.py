"""`rewardhub feedback export --raw` is a lossless backup: comparisons (ties and both-bad included), ratings and the
queue, with ids, timestamps and annotators; importing it into an empty store reproduces every table row for row."""

import json
import sqlite3

import pytest

from rewardhub.cli.main import main
from rewardhub.errors import DataError
from rewardhub_feedback import FeedbackStore
from rewardhub_feedback.schema import connect


def table_rows(db):
    """Every row of every table (ids, times, annotators, metadata as stored), the scale and the schema version."""
    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    out["user_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return out


def fill(store):
    """A store with everything a real one holds, ids with gaps included."""
    user = [{"role": "user", "content": "Say hi ✋"}]
    store.add_comparison("1+1=", "2", "3", "ann", metadata={"task": "add", "nested": {"x": [1, 2]}})
    store.add_comparison("1+1=", "3", "2", "bob", source="import")
    store.add_comparison(user, [{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "no"}],
                         "ann", metadata={})
    store.add_comparison("1+1=", "2", "3", "bob")                     # bob changes his mind: id 2 is gone
    store.add_comparison("pick", "left", "right", "", outcome="tie")   # anonymous tie
    store.add_comparison("pick", "left", "right", "cat", outcome="both_bad")
    store.add_rating("q", "a", 4, "ann", metadata={"why": "fine"})
    store.add_rating("q", "a", 2, "bob")
    store.add_rating("q", "", 1, "")                                   # an empty completion, anonymous
    store.add_rating("q", "a", 5, "ann")                               # ann re-rates (same row, new time)
    store.enqueue("rate me", ["maybe"], source="trainer")
    store.enqueue("compare us", ["x", "y"], required=2, metadata={"run": "r1"})
    store.enqueue("q", ["a"])                                          # already rated: done at once
    item = store.enqueue("label later", ["u", "v"], required=2)
    store.label_item(item, "ann", choice="tie")                        # 1 of 2 labels: stays open
    done = store.enqueue("decided", ["good", "bad"])
    store.label_item(done, "bob", choice="a")


def test_raw_export_then_import_reproduces_every_table(tmp_path, capsys):
    src, dst, backup = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "backup.jsonl"
    with FeedbackStore(src, min_score=0, max_score=10) as s:           # a non-default scale travels too
        fill(s)
    assert main(["feedback", "export", "--db", str(src), "--raw", "-o", str(backup)]) == 0
    rows = [json.loads(line) for line in backup.read_text().splitlines()]
    assert rows[0] == {"record": "store", "schema_version": 2, "min_score": 0.0, "max_score": 10.0}
    kinds = [r["record"] for r in rows[1:]]
    assert (kinds.count("comparison"), kinds.count("rating"), kinds.count("queue")) == (7, 3, 5)
    tie = next(r for r in rows if r.get("outcome") == "tie")
    assert "chosen" not in tie and (tie["completion_a"], tie["completion_b"], tie["annotator"]) == ("left", "right", "")
    capsys.readouterr()

    assert main(["feedback", "import", str(backup), "--db", str(dst)]) == 0
    assert "7 comparison(s), 3 rating(s), 5 queue(s)" in capsys.readouterr().out
    before, after = table_rows(src), table_rows(dst)
    assert set(before) == {"meta", "comparisons", "ratings", "queue", "user_version"}
    for table in before:
        assert after[table] == before[table], table                   # ids, times, annotators, metadata: all equal
    assert [r[0] for r in after["comparisons"]] == [1, 3, 4, 5, 6, 7, 8]  # the gap left by bob's change is kept

    assert main(["feedback", "import", str(backup), "--db", str(dst)]) == 0   # again: nothing doubles
    assert "(15 already stored)" in capsys.readouterr().out
    assert table_rows(dst) == before
    with FeedbackStore(dst) as restored:
        assert restored.scale == (0.0, 10.0)
        assert [(p.prompt, p.chosen) for p in restored.pairs()][:1] == [("1+1=", "2")]
        assert restored.next_open("bob").prompt == "rate me" and restored.stats()["ties"] == 2


def test_a_backup_merges_into_a_used_store_without_clobbering_it(tmp_path):
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with FeedbackStore(src) as s:
        fill(s)
        rows = list(s.export_rows(raw=True))
    with FeedbackStore(dst) as d:
        d.add_comparison("mine", "a", "b", "zed")                      # holds id 1 already
        d.add_rating("q", "a", 1, "ann")                               # ann's rating here wins over the backup's
        result = d.add_comparisons(rows, where="backup row")
        assert result.added_by_record == {"comparison": 7, "rating": 2, "queue": 5}
        assert result.duplicates == 1
        assert d.rating("q", "a") == (1.5, 2)                          # ann 1 (kept) and bob 2 (imported)
        ids = [r[0] for r in d._conn().execute("SELECT id FROM comparisons ORDER BY id")]
        assert len(ids) == len(set(ids)) == 8 and d.pairs()[0].prompt == "mine"
    with FeedbackStore(tmp_path / "other_scale.db", min_score=0, max_score=10) as other:
        with pytest.raises(DataError, match=r"rates on the scale 1..5 but this store on 0..10"):
            other.add_comparisons(rows)
        assert other.stats()["comparisons"] == 0


def test_bad_raw_rows_are_refused_with_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"record": "rating", "id": 1, "prompt": "q", "completion": "a", "score": 3, "annotator": "ann",
            "created_at": 1.5, "source": "", "metadata": None}
    path.write_text("\n".join(json.dumps(r) for r in [
        good, {**good, "score": 9}, {**good, "colour": "red"}, {"record": "queue", "kind": "comparison",
                                                               "prompt": "p", "completions": ["x"], "created_at": 2},
        {"record": "comparison", "outcome": "meh", "prompt": "p", "created_at": 1},
        {"record": "table"}]) + "\n")
    with FeedbackStore(tmp_path / "s.db") as s:
        with pytest.raises(DataError) as info:
            s.import_jsonl(path)
        text = str(info.value)
        assert "5 bad row(s); nothing was imported" in text
        for line, message in [(2, "`score` 9 is outside this store's rating scale"),
                              (3, "a raw rating record has no field(s) colour"),
                              (4, "a queue record needs `kind` rating (one completion) or comparison (two)"),
                              (5, "`outcome` must be one of preferred, tie, both_bad"),
                              (6, "`record` must be one of")]:
            assert f"bad.jsonl line {line}: {message}" in text
        assert s.stats()["ratings"] == 0


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    db = tmp_path / "v1.db"
    with FeedbackStore(db) as s:
        s.add_comparison("p", "a", "b", "ann")
    conn = connect(db, 5)                                              # make it look like a version-1 store
    conn.execute("ALTER TABLE comparisons DROP COLUMN outcome")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with FeedbackStore(db) as s:
        assert s._conn().execute("PRAGMA user_version").fetchone()[0] == 2
        assert [(p.prompt, p.chosen) for p in s.pairs()] == [("p", "a")]
        s.add_comparison("p", "a", "b", "bob", outcome="tie")
        assert s.stats()["ties"] == 1
