"""The ``human`` provider and its feedback store: storage rules, concurrent use of one SQLite file, TRL import
and export, rewards and pending samples, the HTTP API and labelling page on a real server, the CLI, and
training end to end (DPO on stored pairs; GRPO with an annotator labelling the queue while the run waits)."""

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.cookiejar import CookieJar
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest

from rewardhub import Sample, Status
from rewardhub.cli.main import main
from rewardhub.errors import ConfigError, DataError, RewardProviderError
from rewardhub.http_server import AppThread
from rewardhub.recipes.dpo import tokenize_pairs
from rewardhub.reward_resolution import build_reward
from rewardhub.testing import build_tokenizer, check_provider
from rewardhub_feedback import FeedbackStore, HumanFeedbackReward
from rewardhub_feedback.server import create_app
from rewardhub_tasks.preferences import build_arithmetic_preferences


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    return path


def triples(rows):
    return sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as s:
        yield s


# --------------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------------

def test_pairs_are_deduplicated_and_follow_the_majority(store):
    store.add_comparison("1+1=", "2", "3", "ann")
    store.add_comparison("1+1=", "2", "3", "ann")            # same judgement again: stored once
    store.add_comparison("1+1=", "2", "3", "bob")
    store.add_comparison("1+1=", "3", "2", "cat")            # outvoted 2 to 1
    store.add_comparison("2+2=", "4", "5", "ann")
    store.add_comparison("2+2=", "5", "4", "bob")            # split 1:1 -> no preference, left out
    store.add_comparison("3+3=", "7", "6", "ann")
    store.add_comparison("3+3=", "6", "7", "ann")            # ann changed her mind: replaces her first vote
    pairs = store.pairs()
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("1+1=", "2", "3"), ("3+3=", "6", "7")]
    assert dict(pairs[0].meta) == {"votes": 2, "against": 1}
    stats = store.stats()
    assert (stats["comparisons"], stats["pairs"], stats["split_pairs"], stats["annotators"]) == (6, 2, 1, 3)
    assert store.comparison_votes("1+1=", "2", "3") == (2, 1) and store.comparison_votes("1+1=", "3", "2") == (1, 2)


def test_ratings_mean_over_annotators_and_rerating_replaces(store):
    store.add_rating("q", "a", 5, "ann")
    store.add_rating("q", "a", 2, "bob")
    store.add_rating("q", "a", 3, "bob")                      # bob re-rates: replaces his 2
    store.add_rating("q", "", 1, "ann")                       # an empty completion can be rated
    assert store.rating("q", "a") == (4.0, 2)
    assert store.rating("q", "") == (1.0, 1) and store.rating("q", "b") is None
    assert store.stats()["ratings"] == 3


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add_comparison("", "a", "b"), "`prompt` is empty"),
    (lambda s: s.add_comparison("p", "  ", "b"), "`chosen` is empty"),
    (lambda s: s.add_comparison("p", "same", "same"), "tie or self-pair"),
    (lambda s: s.add_comparison("p", 3, "b"), "`chosen` must be a string"),
    (lambda s: s.add_comparison("p", "a", "b", metadata=[1]), "`metadata` must be a JSON object"),
    (lambda s: s.add_rating("p", "a", 6), "outside this store's rating scale 1..5"),
    (lambda s: s.add_rating("p", "a", True), "`score` must be a number"),
    (lambda s: s.add_rating("p", "a", "good"), "is not a number"),
    (lambda s: s.enqueue("p", ["x", "x"]), "identical"),
    (lambda s: s.enqueue("p", []), "one completion (to rate) or two"),
    (lambda s: s.label_item(999, "ann", score=3), "queue item 999 does not exist"),
])
def test_bad_input_is_refused_with_what_to_fix(store, call, message):
    store.add_comparison("keep", "a", "b", "ann")
    with pytest.raises(DataError, match=re.escape(message)):
        call(store)
    assert store.stats()["comparisons"] == 1


def test_one_bad_row_imports_nothing_and_names_the_line(store, tmp_path):
    store.add_comparison("kept", "a", "b")
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "rejected": "a"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 4: not valid JSON"):
        store.import_jsonl(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "chosen": ""}) + "\n")
    with pytest.raises(DataError, match=r"(?s)1 bad preference row\(s\); nothing was imported.*line 2: `chosen` is "):
        store.import_jsonl(path)
    assert [p.prompt for p in store.pairs()] == ["kept"]


def test_conversational_rows_round_trip_and_tokenize_for_dpo(store, tmp_path):
    user = [{"role": "user", "content": "2+2="}]
    rows = [{"prompt": user, "chosen": [{"role": "assistant", "content": "4"}],
             "rejected": [{"role": "assistant", "content": "5"}]},
            {"chosen": [*user, {"role": "assistant", "content": "four"}],   # TRL's implicit-prompt form
             "rejected": [*user, {"role": "assistant", "content": "five"}]}]
    assert store.import_jsonl(write_jsonl(tmp_path / "chat.jsonl", rows)).added == 2
    exported = list(store.export_rows())
    assert exported[0] == rows[0]
    assert exported[1]["prompt"] == user and exported[1]["chosen"] == [{"role": "assistant", "content": "four"}]
    [ex, _] = tokenize_pairs([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                              for p in store.pairs()], build_tokenizer(), max_length=64)
    tok = build_tokenizer()
    assert tok.decode(ex["prompt"]) == "<|user|>2+2=<eos><|assistant|>" and tok.decode(ex["chosen"]) == "4<eos>"


def test_store_file_checks(tmp_path):
    with pytest.raises(DataError, match="no feedback store at"):
        FeedbackStore(tmp_path / "missing.db", create=False)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a usable SQLite feedback store"):
        FeedbackStore(tmp_path / "junk.db")
    FeedbackStore(tmp_path / "s.db", min_score=0, max_score=10).close()
    with pytest.raises(DataError, match=r"rates on the scale 0..10, but max_score=5"):
        FeedbackStore(tmp_path / "s.db", max_score=5)
    with FeedbackStore(tmp_path / "s.db") as s:
        assert s.scale == (0.0, 10.0)
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(DataError, match="schema version 99, newer"):
        FeedbackStore(tmp_path / "s.db")


WRITER = """
import sys, time
from rewardhub_feedback import FeedbackStore
store = FeedbackStore(sys.argv[1])
for i in range(int(sys.argv[2])):  # labels arriving one by one, as from the HTTP server
    store.add_rating(f"prompt {i}", "completion", 1 + i % 5, "writer")
    store.add_comparison(f"prompt {i}", "good", "bad", "writer")
    time.sleep(0.002)
"""


def test_wal_lets_a_writer_process_and_a_reader_work_at_once(tmp_path):
    db = tmp_path / "shared.db"
    reader = FeedbackStore(db)
    assert reader._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    n = 150
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n)], stderr=subprocess.PIPE, text=True)
    seen, pairs_seen = [], []
    while proc.poll() is None:      # read continuously while the other process writes
        seen.append(reader.stats()["ratings"])
        pairs_seen.append(len(reader.pairs()))
        if len(seen) % 10 == 0:     # and write from this side too, as a trainer enqueueing items does
            reader.enqueue(f"from the reader {len(seen)}", ["x"])
    assert proc.returncode == 0, proc.stderr.read()
    assert seen == sorted(seen) and pairs_seen == sorted(pairs_seen)   # never saw a torn or shrinking state
    assert len(set(seen)) > 2, "the reader should have seen the writer's progress"
    assert reader.stats()["ratings"] == n and len(reader.pairs()) == n
    assert reader.queue_counts()["open"] == len(seen) // 10
    reader.close()


def test_import_export_round_trip_of_arithmetic_preferences(tmp_path):
    rows = list(build_arithmetic_preferences("train", size=64))
    src = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with FeedbackStore(tmp_path / "a.db") as a:
        assert a.import_jsonl(src, annotator="ann").added == 64
        again = a.add_comparisons(build_arithmetic_preferences("train", size=64), annotator="ann")
        assert (again.added, again.duplicates) == (0, 64)
        n = a.export_jsonl(tmp_path / "out.jsonl")
        a.export_jsonl(tmp_path / "raw.jsonl", raw=True)
        raw_a = list(a.export_rows(raw=True))
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 64 and triples(out) == triples(rows) and set(out[0]) == {"prompt", "chosen", "rejected"}
    assert raw_a[0] == {"record": "store", "schema_version": 2, "min_score": 1.0, "max_score": 5.0}
    assert raw_a[1]["annotator"] == "ann" and raw_a[1]["source"] == "prefs.jsonl"
    assert raw_a[1]["metadata"]["answer"] == rows[0]["answer"] and raw_a[1]["metadata"]["margin"] == 1.0
    with FeedbackStore(tmp_path / "b.db") as b:      # the raw export restores everything, times included
        b.import_jsonl(tmp_path / "raw.jsonl")
        assert list(b.export_rows(raw=True)) == raw_a


# --------------------------------------------------------------------------------------------------------
# the provider
# --------------------------------------------------------------------------------------------------------

def test_ratings_become_rewards_and_unlabelled_samples_are_pending_and_queued(tmp_path):
    db = tmp_path / "f.db"
    provider = HumanFeedbackReward(db=str(db))
    provider.store.add_rating("1+1=", "2", 5, "ann")
    provider.store.add_rating("1+1=", "2", 4, "bob")
    provider.store.add_rating("1+1=", "3", 1, "ann")
    samples = [Sample("1+1=", "2"), Sample("1+1=", "3"), Sample("1+1=", "11"), Sample("1+1=", "11")]
    r = provider(samples)
    assert [x.status for x in r] == [Status.OK, Status.OK, Status.PENDING, Status.PENDING]
    assert (r[0].value, r[1].value) == (0.875, 0.0) and "mean of 2 human rating(s): 4.5 on 1..5" in r[0].detail
    assert "queued for annotators" in r[2].detail
    provider([Sample("1+1=", "11")])                          # asked again: still one queue item
    item = provider.store.next_open("ann")
    assert (item.kind, item.prompt, item.completion_a, provider.store.queue_counts()["open"]) == (
        "rating", "1+1=", "11", 1)
    provider.store.label_item(item.id, "ann", score=3)
    assert provider.store.queue_counts() == {"open": 0, "done": 1}
    [now] = provider([Sample("1+1=", "11")])
    assert now.status is Status.OK and now.value == 0.5
    m = provider.metrics()
    assert (m["labelled"], m["pending"], m["enqueued"], m["queue_open"], m["status/pending"]) == (3, 3, 1, 0, 3)
    provider.close()


def test_wait_lets_an_annotator_label_before_the_batch_is_scored(tmp_path):
    provider = HumanFeedbackReward(db=str(tmp_path / "f.db"), wait=20)
    annotator = FeedbackStore(tmp_path / "f.db")

    def label_when_queued():
        while (item := annotator.next_open("ann")) is None:
            time.sleep(0.05)
        annotator.label_item(item.id, "ann", score=5)

    thread = threading.Thread(target=label_when_queued)
    thread.start()
    t0 = time.monotonic()
    [r] = provider([Sample("q", "a")])
    thread.join()
    assert r.status is Status.OK and r.value == 1.0 and time.monotonic() - t0 < 10
    annotator.close()
    provider.close()


def test_compare_uses_votes_then_ratings_else_queues_and_raises(tmp_path):
    provider = HumanFeedbackReward(db=str(tmp_path / "f.db"))
    s = provider.store
    s.add_comparison("p", "a", "b", "ann")
    s.add_comparison("p", "a", "b", "bob")
    s.add_comparison("p", "b", "a", "cat")
    assert provider.compare("p", "a", "b") == pytest.approx(2 / 3)
    assert provider.compare("p", "b", "a") == pytest.approx(1 / 3)
    s.add_rating("p", "x", 4)
    s.add_rating("p", "y", 2)
    assert (provider.compare("p", "x", "y"), provider.compare("p", "y", "x")) == (1.0, 0.0)
    with pytest.raises(RewardProviderError, match=r"no human judgement yet.*queued"):
        provider.compare("p", "x", "z")
    item = s.next_open()
    assert (item.kind, item.completion_a, item.completion_b) == ("comparison", "x", "z")
    s.label_item(item.id, "ann", choice="b")
    assert provider.compare("p", "x", "z") == 0.0 and s.queue_counts()["open"] == 0
    provider.close()


def test_provider_passes_the_conformance_kit(tmp_path):
    provider = HumanFeedbackReward(db=str(tmp_path / "f.db"))
    provider.store.add_rating("1+1=", "2", 5)
    results = check_provider(provider, [Sample("1+1=", "2"), Sample("1+1=", "5"), Sample("", "x")])
    assert [r.status for r in results] == [Status.OK, Status.PENDING, Status.ERROR]
    assert "empty prompt" in results[2].detail
    assert provider.store.queue_counts()["open"] == 1 + 7   # "5" and the kit's seven odd completions
    provider.close()


def test_human_is_registered_and_built_from_reward_args(tmp_path, fresh_plugins):
    db = tmp_path / "f.db"
    provider = build_reward("human", {"db": str(db), "wait": "0", "max_score": "10", "min_score": "0"})
    assert isinstance(provider, HumanFeedbackReward) and provider.store.scale == (0.0, 10.0)
    provider.close()
    with pytest.raises(ConfigError, match="wait"):
        build_reward("human", {"db": str(db), "wait": "soon"})
    with pytest.raises(ConfigError, match=r"rates on the scale 0\.\.10"):
        build_reward("human", {"db": str(db), "max_score": "5"})
    with pytest.raises(ConfigError, match="no feedback store at"):
        build_reward("human", {"db": str(tmp_path / "typo.db"), "enqueue": "false"})
    with pytest.raises(DataError, match="holds no preference pairs"):
        HumanFeedbackReward(db=str(db)).preference_pairs()


# --------------------------------------------------------------------------------------------------------
# HTTP API and labelling page, on a real server
# --------------------------------------------------------------------------------------------------------

@contextmanager
def serving(store):
    with AppThread(create_app(store)) as thread:
        yield thread.url


_BROWSER = build_opener(HTTPCookieProcessor(CookieJar()))  # keeps the page's session cookie, as a browser does
_CSRF = {}


def http(method, url, body=None, form=None, headers=None, opener=_BROWSER):
    """(status, body text); JSON ``body`` or a urlencoded ``form``. Redirects are followed and cookies kept (as a
    browser does); a form gets the CSRF token of the last page this client was served."""
    data, head = None, dict(headers or {})
    if body is not None:
        data, head["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        form = {"csrf": _CSRF.get(id(opener), ""), **form}
        data, head["Content-Type"] = urlencode(form).encode(), "application/x-www-form-urlencoded"
    req = Request(url, data=data, method=method, headers=head)
    try:
        with opener.open(req, timeout=10) as resp:
            status, text = resp.status, resp.read().decode()
    except HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    if found := re.search(r'name="csrf" value="([^"]+)"', text):
        _CSRF[id(opener)] = found.group(1)
    return status, text


def test_http_api_and_labelling_page(store):
    with serving(store) as url:
        code, text = http("POST", f"{url}/api/queue", {"prompt": "What is 6*7?", "completions": ["42 <b>"]})
        assert code == 201
        rate_id = json.loads(text)["id"]
        code, text = http("POST", f"{url}/api/queue", {"prompt": "Pick one", "completions": ["left", "right"]})
        assert code == 201
        code, page = http("GET", f"{url}/?annotator=ann")
        assert code == 200 and "What is 6*7?" in page and "42 &lt;b&gt;" in page
        assert page.count('name="score"') == 5                              # one button per point of 1..5
        code, page = http("POST", f"{url}/label", form={"item": rate_id, "annotator": "ann", "score": "4"})
        assert code == 200 and "Pick one" in page and "A is better" in page  # redirected to the next item
        assert store.rating("What is 6*7?", "42 <b>") == (4.0, 1)
        code, text = http("GET", f"{url}/api/next?annotator=ann")
        item = json.loads(text)["item"]
        assert item["kind"] == "comparison" and item["completions"] == ["left", "right"]
        code, _ = http("POST", f"{url}/api/label", {"item": item["id"], "annotator": "ann", "choice": "b"})
        assert code == 201 and store.pairs()[0].chosen == "right"
        assert json.loads(http("GET", f"{url}/api/next?annotator=ann")[1])["item"] is None
        code, _ = http("POST", f"{url}/api/comparisons", {"prompt": "p", "chosen": "a", "rejected": "b",
                                                          "annotator": "bob", "metadata": {"task": "demo"}})
        assert code == 201
        code, _ = http("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a", "score": 2})
        assert code == 201

        code, text = http("POST", f"{url}/api/ratings", {"prompt": "p", "completion": "a", "score": 9})
        assert code == 400 and "outside this store's rating scale 1..5" in json.loads(text)["detail"]
        code, text = http("POST", f"{url}/api/comparisons", {"prompt": "p", "chosen": "a", "rejected": "a"})
        assert code == 400 and "tie or self-pair" in text
        code, text = http("POST", f"{url}/api/comparisons", {"prompt": "p", "choosen": "a", "rejected": "b"})
        assert code == 422 and "choosen" in text and "chosen" in text
        code, text = http("POST", f"{url}/label", form={"item": rate_id, "annotator": "ann", "score": "11"})
        assert code == 400 and "outside this store" in text and "What is 6*7?" in text

        stats = json.loads(http("GET", f"{url}/api/stats")[1])
        assert (stats["pairs"], stats["ratings"], stats["queue_open"], stats["queue_done"]) == (2, 2, 0, 2)
        code, text = http("GET", f"{url}/api/export")
        assert code == 200 and triples(map(json.loads, text.splitlines())) == [("Pick one", "right", "left"),
                                                                              ("p", "a", "b")]
        raw = [json.loads(line) for line in http("GET", f"{url}/api/export?raw=true")[1].splitlines()]
        assert raw[2]["annotator"] == "bob" and raw[2]["metadata"] == {"task": "demo"}


# --------------------------------------------------------------------------------------------------------
# CLI and training end to end
# --------------------------------------------------------------------------------------------------------

def test_cli_import_export_stats(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    src = write_jsonl(tmp_path / "p.jsonl", build_arithmetic_preferences("train", size=16))
    assert main(["feedback", "import", str(src), "--db", db, "--annotator", "ann"]) == 0
    assert main(["feedback", "import", "arithmetic-preferences", "--data-arg", "size=24", "--db", db]) == 0
    text = capsys.readouterr().out                                     # another annotator: new votes
    assert "imported 16 comparison(s)" in text and "imported 24 comparison(s)" in text
    assert main(["feedback", "stats", "--db", db, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pairs"], stats["comparisons"], stats["annotators"]) == (24, 40, 2)
    assert main(["feedback", "export", "--db", db, "-o", str(tmp_path / "out.jsonl")]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 24 and "wrote 24 row(s)" in capsys.readouterr().out
    assert main(["feedback", "export", "--db", db, "--raw"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 40       # the store header, then the comparisons

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}])
    assert main(["feedback", "import", str(bad), "--db", str(tmp_path / "new.db")]) == 2
    assert "bad.jsonl line 1: chosen and rejected are the same" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()                         # a failed import leaves no empty store
    assert main(["feedback", "stats", "--db", str(tmp_path / "none.db")]) == 2
    assert "no feedback store at" in capsys.readouterr().err


def test_dpo_trains_on_the_stored_human_pairs(tiny_model_path, tmp_path, capsys):
    db = tmp_path / "prefs.db"
    with FeedbackStore(db) as s:
        s.add_comparisons(build_arithmetic_preferences("train", size=64, errors="digit"), annotator="ann")
    out = tmp_path / "dpo"
    code = main(["train", "--algo", "dpo", "--reward", "human", "--reward-arg", f"db={db}",
                 "--model", str(tiny_model_path), "--out", str(out), "--max-steps", "6", "--batch-size", "16",
                 "--lr", "1e-2", "--warmup-ratio", "0", "--log-every", "1", "--save-every", "0",
                 "--threads", "1"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "pairs" in r]
    assert len(train) == 6 and all(r["pairs"] == 16 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]       # it learns the stored preferences
    text = capsys.readouterr().out
    assert "train_pairs" in text and "64" in text and "provider" in text
    assert (out / "model" / "config.json").exists()


def test_grpo_with_an_annotator_labelling_the_queue(tiny_model_path, tmp_path):
    """Human in the loop: the run queues its completions and waits; an annotator (a thread here) rates them."""
    db = tmp_path / "loop.db"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+1="} for i in range(4)])
    annotator, stop = FeedbackStore(db), threading.Event()

    def label_forever():
        while not stop.is_set():
            item = annotator.next_open("bot")
            if item is None:
                time.sleep(0.02)
                continue
            annotator.label_item(item.id, "bot", score=5 if "7" in item.completion_a else 1)

    thread = threading.Thread(target=label_forever, daemon=True)
    thread.start()
    out = tmp_path / "grpo"
    try:
        code = main(["train", "--algo", "grpo", "--reward", "human", "--reward-arg", f"db={db}",
                     "--reward-arg", "wait=30", "--model", str(tiny_model_path), "--data", str(prompts),
                     "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--num-generations", "2",
                     "--max-new-tokens", "4", "--sft-warmup-steps", "0", "--log-every", "1", "--save-every", "0",
                     "--threads", "1"])
    finally:
        stop.set()
        thread.join(5)
    assert code == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward/frac_ok" in r]
    assert len(steps) == 2 and all(r["reward/frac_ok"] == 1.0 and r["reward/failed"] == 0 for r in steps)
    assert steps[-1]["provider/labelled"] == 8 and steps[-1]["provider/queue_open"] == 0
    stats = annotator.stats()
    assert stats["ratings"] >= 1 and stats["queue_done"] == stats["ratings"] and stats["queue_open"] == 0
    annotator.close()
