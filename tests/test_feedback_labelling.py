"""Labelling people can do all day: ties and both-bad (stored, never a preference), `rewardhub feedback queue` from a
file or a model, keyboard shortcuts on the page, and agreement in `stats` (checked against hand-computed kappas)."""

import json
import re

import pytest

from rewardhub.cli.main import main
from rewardhub.errors import DataError
from rewardhub.recipes.dpo import pairs_from_provider
from rewardhub_feedback import FeedbackStore, HumanFeedbackReward
from rewardhub_feedback.agreement import cohen_kappa, fleiss_kappa
from rewardhub_feedback.page import KEYS_SCRIPT, _csp_hash, render_page, security_headers


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ties_and_both_bad_are_stored_but_are_no_preference(tmp_path):
    provider = HumanFeedbackReward(db=str(tmp_path / "f.db"))
    s = provider.store
    tie = s.enqueue("p1", ["x", "y"])
    bad = s.enqueue("p2", ["u", "v"], required=2)
    pref = s.enqueue("p3", ["good", "bad"])
    s.label_item(tie, "ann", choice="tie")
    s.label_item(bad, "ann", choice="both_bad")
    s.label_item(pref, "ann", choice="a")
    with pytest.raises(DataError, match="`tie` or `both_bad`"):
        s.label_item(tie, "ann", choice="neither")
    assert [(p.prompt, p.chosen, p.rejected) for p in s.pairs()] == [("p3", "good", "bad")]
    assert pairs_from_provider(provider) == [{"prompt": "p3", "chosen": "good", "rejected": "bad"}]   # DPO's view
    assert [r["prompt"] for r in s.export_rows()] == ["p3"]           # the training export: no ties either
    stats = s.stats()
    assert (stats["comparisons"], stats["ties"], stats["both_bad"], stats["pairs"]) == (1, 1, 1, 1)
    assert s.queue_counts() == {"open": 1, "done": 2}                  # a tie is a label: the item is done
    assert s.next_open("ann") is None and s.next_open("bob").id == bad  # ann judged it; bob has not
    assert provider.compare("p1", "x", "y") == 0.5 and provider.compare("p2", "v", "u") == 0.5  # judged: neither
    s.label_item(bad, "bob", choice="b")                               # bob prefers v
    assert provider.compare("p2", "u", "v") == pytest.approx(0.25)     # 1 vote for v, 1 for neither
    assert [(p.prompt, p.chosen) for p in s.pairs()] == [("p3", "good"), ("p2", "v")]
    s.label_item(bad, "bob", choice="tie")                             # bob changes his mind: replaces his vote
    assert [p.prompt for p in s.pairs()] == ["p3"] and s.stats()["ties"] == 2
    only_ties = HumanFeedbackReward(db=str(tmp_path / "ties.db"))
    only_ties.store.add_comparison("p", "a", "b", "ann", outcome="tie")
    with pytest.raises(DataError, match="1 ties and 0 both-bad judgements, which carry no preference"):
        only_ties.preference_pairs()
    provider.close()
    only_ties.close()


def test_agreement_matches_hand_computed_kappas(tmp_path, capsys, monkeypatch):
    # Fleiss (1971)'s worked example (14 raters, 10 items, 5 categories): kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa([{j: n for j, n in enumerate(row) if n} for row in table]) == pytest.approx(0.20993, abs=1e-5)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == 1.0 and cohen_kappa([("a", "a")]) is None

    db = tmp_path / "agree.db"
    with FeedbackStore(db) as s:
        # ann and bob on four pairs: agree, disagree, agree, agree (both say tie); "x" sorts first, so it is A
        for prompt, ann, bob in [("p1", "a", "a"), ("p2", "a", "b"), ("p3", "b", "b"), ("p4", "tie", "tie")]:
            item = s.enqueue(prompt, ["x", "y"], required=2)
            s.label_item(item, "ann", choice=ann)
            s.label_item(item, "bob", choice=bob)
        s.add_comparison("p5", "x", "y", "ann")                       # one annotator only: no agreement to measure
        for who, score in (("ann", 4), ("bob", 4), ("cat", 5)):
            s.add_rating("q", "r", score, who)
        stats = s.stats(per_item=True)
    # By hand. Majority shares 1, 1/2, 1, 1 -> 0.875.
    # Cohen: p_o = 3/4; ann's shares a 1/2, b 1/4, tie 1/4; bob's a 1/4, b 1/2, tie 1/4;
    #   p_e = 1/8 + 1/8 + 1/16 = 0.3125; kappa = (0.75 - 0.3125) / 0.6875 = 0.63636.
    # Fleiss: P_i = 1, 0, 1, 1 -> P = 0.75; category shares a 3/8, b 3/8, tie 2/8 -> P_e = 22/64;
    #   kappa = (0.75 - 0.34375) / 0.65625 = 0.61905.
    c = stats["agreement"]["comparisons"]
    assert c["items"] == 4 and c["mean_majority_share"] == pytest.approx(0.875)
    assert c["fleiss_kappa"] == pytest.approx(0.61905, abs=1e-5)
    assert c["cohen_kappa"] == [{"annotators": ["ann", "bob"], "items": 4, "kappa": pytest.approx(0.63636, abs=1e-5)}]
    # Ratings: one item scored 4, 4, 5 -> majority 2/3; P = (4 + 1 - 3) / 6 = 1/3, P_e = 4/9 + 1/9 = 5/9,
    #   kappa = (1/3 - 5/9) / (4/9) = -0.5; Cohen ann/bob 4-4 alone: chance agreement 1, undefined.
    r = stats["agreement"]["ratings"]
    assert (r["items"], r["mean_majority_share"], r["fleiss_kappa"]) == (1, pytest.approx(2 / 3), pytest.approx(-0.5))
    assert [p["kappa"] for p in r["cohen_kappa"]] == [None, pytest.approx(0.0), pytest.approx(0.0)]
    assert stats["items"][1] == {"kind": "comparison", "prompt": "p2", "a": "x", "b": "y", "annotators": 2,
                                 "votes": {"a": 1, "b": 1}, "majority_share": 0.5}
    assert stats["items"][-1]["votes"] == {"4": 2, "5": 1}

    from rewardhub.cli.common import console

    monkeypatch.setattr(console, "width", 200)                         # one table row per line
    assert main(["feedback", "stats", "--db", str(db), "--per-item"]) == 0
    out = re.sub(r"[\s│]+", " ", capsys.readouterr().out)
    assert "majority share 0.875; Fleiss' kappa 0.619" in out
    assert "comparisons: Cohen's kappa ann / bob 0.636 over 4 item(s)" in out
    assert "ratings: Cohen's kappa ann / bob undefined (one category only) over 1 item(s)" in out
    assert "items judged by 2+ annotators" in out and "tie: 2" in out


def test_queue_a_file_of_items(tmp_path, capsys):
    db = str(tmp_path / "q.db")
    rows = [{"prompt": "rate me", "completions": ["maybe"], "task": "demo"},
            {"prompt": "compare us", "completion_a": "x", "completion_b": "y", "required": 2},
            {"prompt": "one more", "completion": "z", "metadata": {"k": 1}}]
    path = write_jsonl(tmp_path / "items.jsonl", rows)
    assert main(["feedback", "queue", str(path), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "queued 3 new item(s)" in out and "2 to rate, 1 to compare" in out
    assert main(["feedback", "queue", str(path), "--db", db]) == 0    # again: nothing doubles
    assert "queued 0 new item(s)" in capsys.readouterr().out
    with FeedbackStore(db) as s:
        raw = [r for r in s.export_rows(raw=True) if r["record"] == "queue"]
        assert [(r["kind"], r["completions"], r["required"], r["source"]) for r in raw] == [
            ("rating", ["maybe"], 1, "items.jsonl"), ("comparison", ["x", "y"], 2, "items.jsonl"),
            ("rating", ["z"], 1, "items.jsonl")]
        assert raw[0]["metadata"] == {"task": "demo"} and raw[2]["metadata"] == {"k": 1}
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"prompt": "p", "completions": ["a", "a"]},
                                              {"prompt": "p", "answer": "no completion"}])
    assert main(["feedback", "queue", str(bad), "--db", str(tmp_path / "bad.db")]) == 2
    err = capsys.readouterr().err
    assert "nothing was queued" in err and "bad.jsonl row 2: no completion to label" in err
    assert main(["feedback", "queue", str(bad), "--db", db, "--model", "m"]) == 2
    assert "not both" in capsys.readouterr().err


def test_queue_completions_sampled_from_a_model(tiny_model_path, tmp_path, capsys):
    db = str(tmp_path / "m.db")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+{i}="} for i in range(6)])
    assert main(["feedback", "queue", "--db", db, "--model", str(tiny_model_path), "--data", str(prompts),
                 "--num-generations", "2", "--max-new-tokens", "6", "--limit", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"queued (\d+) new item\(s\).*?(?:(\d+) skipped)?", out, re.S)
    with FeedbackStore(db) as s:
        items = [r for r in s.export_rows(raw=True) if r["record"] == "queue"]
    skipped = 5 - len(items)
    assert int(found.group(1)) == len(items) and (skipped == 0 or f"{skipped} skipped" in out)
    assert len(items) >= 3 and all(r["kind"] == "comparison" and r["completions"][0] != r["completions"][1]
                                   for r in items)
    assert {r["prompt"] for r in items} <= {f"{i}+{i}=" for i in range(5)}
    assert items[0]["metadata"]["model"] == str(tiny_model_path) and items[0]["source"].startswith("model:")
    assert main(["feedback", "queue", "--db", db, "--model", str(tiny_model_path), "--data", str(prompts),
                 "--num-generations", "1", "--max-new-tokens", "4", "--limit", "2"]) == 0
    with FeedbackStore(db) as s:
        assert s.queue_counts()["open"] == len(items) + 2
    assert main(["feedback", "queue", "--db", db, "--model", str(tiny_model_path), "--data", str(prompts),
                 "--num-generations", "3"]) == 2
    assert "must be 1 (a completion to rate) or 2" in capsys.readouterr().err


def test_the_page_shows_its_keyboard_shortcuts_and_allows_only_its_own_script(tmp_path):
    with FeedbackStore(tmp_path / "k.db") as s:
        s.enqueue("pick", ["left", "right"])
        s.enqueue("rate", ["r"])
        pair, rating = s.next_open(), s.next_open(after=1)
    page = render_page(pair, "ann", 0, (1.0, 5.0), {"queue_open": 2, "ratings": 0, "comparisons": 0, "path": "k"})
    for key, value in (("1", "a"), ("2", "b"), ("t", "tie"), ("b", "both_bad")):
        assert f'value="{value}" data-key="{key}"' in page
    assert 'data-key="s"' in page and "Keyboard: 1 A is better, 2 B is better, t tie, b both bad, s skip" in page
    page = render_page(rating, "ann", 0, (1.0, 5.0), {"queue_open": 2, "ratings": 0, "comparisons": 0, "path": "k"})
    assert all(f'value="{p}" data-key="{p}"' in page for p in range(1, 6)) and "the digits rate, s skip" in page
    assert f"<script>{KEYS_SCRIPT}</script>" in page and page.count("<script") == 1
    assert f"script-src {_csp_hash(KEYS_SCRIPT)};" in security_headers()["Content-Security-Policy"]
