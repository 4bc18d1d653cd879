"""`rewardhub report`: plots and an HTML page from real tiny runs, the series maths, escaping, bad input."""

import base64
import html
import json
import re
import shutil

import pytest
from conftest import records

from rewardhub.cli.main import main
from rewardhub.config import RLConfig, SFTConfig
from rewardhub.console import number
from rewardhub.errors import ConfigError, DataError
from rewardhub.report import final_metrics, first_metrics, plan, read_metrics, series, write_report
from rewardhub.rewards import Reward, RewardProvider, Status

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class SevensWithParts(RewardProvider):
    """Two components (sevens, brevity) and a timeout on every 8th sample: components and statuses to plot."""

    def score(self, samples):
        out = []
        for i, s in enumerate(samples):
            if i % 8 == 7:
                out.append(Reward.failed(Status.TIMEOUT, "slow"))
                continue
            sevens, brevity = float(s.completion.count("7")), 1.0 / (1 + len(s.completion))
            out.append(Reward(sevens + brevity, Status.OK if sevens else Status.WRONG,
                              parts={"sevens": sevens, "brevity": brevity}))
        return out


@pytest.fixture(scope="module")
def grpo_run(tiny_model_path, tmp_path_factory):
    from rewardhub.recipes.rl import train_rl

    out = tmp_path_factory.mktemp("grpo") / "run"
    cfg = RLConfig(model=str(tiny_model_path), algo="grpo", data="arithmetic", data_args={"size": 64}, out=str(out),
                   max_steps=4, batch_size=2, num_generations=4, max_new_tokens=6, lr=1e-2, warmup_ratio=0.0,
                   lr_scheduler="constant", log_every=1, eval_every=2, save_every=0, eval_size=4, threads=1,
                   completions_every=2, seed=0)
    train_rl(cfg, provider=SevensWithParts())
    return out


@pytest.fixture(scope="module")
def sft_run(tiny_model_path, tmp_path_factory):
    from rewardhub.recipes.sft import train_sft

    out = tmp_path_factory.mktemp("sft") / "run"
    train_sft(SFTConfig(model=str(tiny_model_path), data="arithmetic", data_args={"size": 64}, out=str(out),
                        max_steps=4, batch_size=4, lr=3e-3, warmup_ratio=0.0, log_every=1, eval_every=2,
                        save_every=0, eval_size=4, eval_max_new_tokens=4, threads=1))
    return out


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, (path, len(data))


def embedded(page):
    return [base64.b64decode(m) for m in DATA_URI.findall(page)]


def assert_self_contained(page):
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<link" not in page.lower() and "url(" not in page


# --- the series maths, on hand-written rows ------------------------------------------------------------------

ROWS = [
    {"step": 0, "kind": "eval", "time": 0.1, "accuracy": 0.25, "reward_mean": 0.3, "n": 8.0},
    {"step": 1, "kind": "train", "time": 0.2, "reward/mean": 0.5, "reward/std": 0.1, "loss": 2.0,
     "reward/frac_ok": 0.5, "reward/frac_wrong": 0.5, "reward/sevens/mean": 1.5},
    {"step": 2, "kind": "train", "time": 0.3, "reward/mean": 0.75, "reward/std": 0.2, "loss": None,
     "reward/frac_ok": 0.75, "reward/frac_wrong": 0.25, "reward/sevens/mean": 2.0, "note": "text"},
    {"step": 2, "kind": "eval", "time": 0.4, "accuracy": 0.5, "reward_mean": 0.6, "n": 8.0},
    {"step": 3, "kind": "train", "time": 0.5, "reward/mean": 1.0, "reward/std": 0.0, "loss": 1.0, "flag": True,
     "reward/frac_ok": 1.0, "reward/frac_wrong": 0.0},
]


def test_series_is_the_logged_values_by_kind_and_step():
    s = series(ROWS, "reward/mean")
    assert (s.steps, s.values) == ([1, 2, 3], [0.5, 0.75, 1.0])
    acc = series(ROWS, "accuracy", "eval")
    assert (acc.steps, acc.values) == ([0, 2], [0.25, 0.5])
    loss = series(ROWS, "loss")  # null (a NaN when logged) is not plotted
    assert (loss.steps, loss.values) == ([1, 3], [2.0, 1.0])
    assert len(series(ROWS, "accuracy")) == 0  # no train row logged it
    assert len(series(ROWS, "flag")) == 0 and len(series(ROWS, "note")) == 0  # bools and text are not metrics
    again = [*ROWS, {"step": 3, "kind": "train", "reward/mean": 0.9}]  # a step logged twice: its last row counts
    assert series(again, "reward/mean").values == [0.5, 0.75, 0.9]


def test_final_and_first_metrics():
    last = final_metrics(ROWS, "train")
    assert last["reward/mean"] == (3, 1.0) and last["loss"] == (3, 1.0) and last["reward/sevens/mean"] == (2, 2.0)
    assert "flag" not in last and "note" not in last and "time" not in last and "step" not in last
    assert first_metrics(ROWS, "eval")["accuracy"] == (0, 0.25)
    assert final_metrics(ROWS, "eval")["accuracy"] == (2, 0.5)


def test_plan_plots_each_topic_from_its_keys_only():
    figures = {f.topic.name: f for f in plan(ROWS)}
    assert set(figures) == {"reward", "heldout", "losses", "statuses"}
    reward = figures["reward"].panels[0]
    drawn = {d.series.key: d for d in reward.lines}
    assert list(drawn) == ["reward/mean", "reward/sevens/mean"]
    assert drawn["reward/mean"].series.values == [0.5, 0.75, 1.0]
    assert drawn["reward/mean"].band.values == [0.1, 0.2, 0.0]
    assert drawn["reward/sevens/mean"].label == "component: sevens"
    statuses = figures["statuses"].panels[0]
    assert [d.label for d in statuses.lines] == ["ok", "wrong"] and statuses.panel.stacked
    assert ("eval", "accuracy") in figures["heldout"].keys
    dpo = [{"step": 1, "kind": "train", "loss": 0.6, "rewards/chosen": 0.1, "rewards/rejected": -0.1,
            "rewards/margins": 0.2, "rewards/accuracies": 1.0, "grad_norm": 0.0, "tokens_per_s": 99.0}]
    assert [f.topic.name for f in plan(dpo)] == ["reward", "heldout", "losses", "throughput"]  # grad_norm all 0
    rm = [{"step": 1, "kind": "train", "loss": 0.7, "accuracy": 0.5, "margin": 0.1, "reward_chosen": 0.2,
           "reward_rejected": 0.1, "grad_norm": 1.5, "tokens_per_s": 50.0},
          {"step": 1, "kind": "eval", "accuracy": 0.6, "margin": 0.2, "loss": 0.65, "mean_reward": 0.1}]
    figures = {f.topic.name: f for f in plan(rm)}
    assert list(figures) == ["reward", "heldout", "losses", "throughput", "optimization"]
    assert figures["heldout"].keys == [("eval", "accuracy"), ("train", "accuracy"), ("eval", "mean_reward"),
                                       ("eval", "margin")]
    assert figures["reward"].keys == [("train", "reward_chosen"), ("train", "reward_rejected"), ("train", "margin")]


# --- real runs -------------------------------------------------------------------------------------------------

def test_report_of_a_grpo_run(grpo_run, tmp_path):
    report = write_report(grpo_run, tmp_path / "report")
    names = [p.name for p in report.plots]
    assert names == ["reward.png", "heldout.png", "losses.png", "kl.png", "statuses.png", "lengths.png",
                     "throughput.png", "optimization.png"]
    for path in report.plots:
        assert_png(path)
    page = report.html.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert embedded(page) == [p.read_bytes() for p in report.plots]  # the page's images are the PNGs
    # the plotted reward is the logged one, and the components are there
    rows = read_metrics(grpo_run / "metrics.jsonl")
    train = records(grpo_run)
    reward = next(f for f in plan(rows) if f.topic.name == "reward").panels[0]
    drawn = {d.series.key: d.series for d in reward.lines}
    assert drawn["reward/mean"].values == [r["reward/mean"] for r in train]
    assert drawn["reward/mean"].steps == [1, 2, 3, 4]
    assert {"reward/sevens/mean", "reward/brevity/mean"} <= set(drawn)
    statuses = next(f for f in plan(rows) if f.topic.name == "statuses")
    assert ("train", "reward/frac_timeout") in statuses.keys  # every 8th sample timed out
    # final metrics: the last row's values, as shown
    last = train[-1]
    assert f"<td>reward/mean</td><td class=\"num\">{number(last['reward/mean'])}</td>" in page
    evals = records(grpo_run, "eval")
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert f"<td>reward_mean</td><td class=\"num\">{number(evals[0]['reward_mean'])}</td>" in page
    # the newest completions file, escaped
    newest = [json.loads(x) for x in (grpo_run / "completions" / "step_00004.jsonl").read_text().splitlines()]
    assert "completions/step_00004.jsonl" in page and f"The first 8 of {len(newest)} rows" in page
    for row in newest[:8]:
        assert html.escape(row["completion"], quote=True) in page
    # the settings from run.json
    assert "<td>algo</td><td>grpo</td>" in page and "<td>max_steps</td><td>4</td>" in page


def test_report_of_an_sft_run_has_only_the_plots_it_has_data_for(sft_run, tmp_path):
    report = write_report(sft_run, tmp_path / "report")
    assert [p.name for p in report.plots] == ["heldout.png", "losses.png", "throughput.png", "optimization.png"]
    for path in report.plots:
        assert_png(path)
    page = report.html.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert len(embedded(page)) == 4
    losses = next(f for f in plan(read_metrics(sft_run / "metrics.jsonl")) if f.topic.name == "losses")
    assert losses.keys == [("train", "loss"), ("eval", "loss")]
    assert "Sampled completions" not in page and "kind <strong>sft</strong>" in page


def test_rl_run_with_an_sft_warmup_gets_a_section_per_stage(grpo_run, sft_run, tmp_path):
    run = tmp_path / "reft"
    shutil.copytree(grpo_run, run, ignore=shutil.ignore_patterns("checkpoints", "model", "report"))
    shutil.copytree(sft_run, run / "sft-warmup", ignore=shutil.ignore_patterns("checkpoints", "model", "report"))
    report = write_report(run)
    assert report.html == run / "report" / "report.html"
    names = {p.name for p in report.plots}
    assert {"reward.png", "sft-warmup-losses.png", "sft-warmup-heldout.png"} <= names
    assert "sft-warmup-reward.png" not in names
    page = report.html.read_text(encoding="utf-8")
    assert 'id="sft-warmup"' in page and "SFT warm-up (sft-warmup/)" in page
    assert len(embedded(page)) == len(report.plots)


def test_report_command(grpo_run, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(grpo_run), "--out", str(out), "--completions", "2"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"report: {out / 'report.html'}" in text and "reward.png" in text
    assert "The first 2 of" in (out / "report.html").read_text()


# --- untrusted text and bad input, on hand-written run directories ------------------------------------------

def write_run(path, rows, lines=None):
    path.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines if lines is not None else [json.dumps(r) for r in rows])
    (path / "metrics.jsonl").write_text(text + ("\n" if text else ""))
    return path


def test_completions_and_settings_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    run = write_run(tmp_path / "run", [*ROWS, {"step": 4, "kind": "train", "<b>bold</b>": 1.0}])
    (run / "run.json").write_text(json.dumps({"kind": "grpo", "config": {"model": '<img src=x onerror="alert(1)">',
                                                                         "data_args": {"k": evil}}}))
    (run / "completions").mkdir()
    (run / "completions" / "step_00002.jsonl").write_text(json.dumps({"prompt": "old", "completion": "old"}) + "\n")
    (run / "completions" / "step_00004.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"prompt": f"2+2= {evil}", "completion": f"4 {evil} & </td></tr></table>", "reward": 1.0, "status": "ok",
         "detail": evil, "advantage": 0.5, "eos": True, "parts": {evil: 1.0}},
        {"prompt": "p", "completion": "c", "reward": 0.0, "status": "wrong", "detail": "", "advantage": -0.5,
         "eos": False, "parts": {}},
    ]) + "\n")
    page = write_report(run).html.read_text()
    assert_self_contained(page)  # no <script> at all
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "4 &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "step_00004.jsonl" in page and ">old<" not in page  # the newest file only


def test_a_run_without_run_json_or_completions(tmp_path):
    report = write_report(write_run(tmp_path / "run", ROWS))
    page = report.html.read_text()
    assert "No <code>run.json</code>" in page and "kind <strong>unknown</strong>" in page
    assert [p.name for p in report.plots] == ["reward.png", "heldout.png", "losses.png", "statuses.png"]


def test_a_torn_last_line_is_left_out_with_a_warning(tmp_path, caplog):
    lines = [json.dumps(r) for r in ROWS] + ['{"step": 4, "kind": "train", "reward/me']
    run = write_run(tmp_path / "run", None, lines)
    report = write_report(run)
    assert any("the last line (line 6) is torn" in n for n in report.notes)
    assert "the last line (line 6) is torn" in caplog.text
    assert "the last line (line 6) is torn" in report.html.read_text()
    assert series(read_metrics(run / "metrics.jsonl"), "reward/mean").steps == [1, 2, 3]


def test_blank_lines_are_skipped(tmp_path):
    lines = [json.dumps(ROWS[0]), "", "   ", *[json.dumps(r) for r in ROWS[1:]], ""]
    assert len(read_metrics(write_run(tmp_path / "run", None, lines) / "metrics.jsonl")) == len(ROWS)


@pytest.mark.parametrize(("bad", "problem"), [
    ('{"step": 1, "kind": "tr', "not JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"kind": "train", "loss": 1.0}', "no integer 'step'"),
])
def test_a_malformed_line_in_the_middle_names_its_line(tmp_path, capsys, bad, problem):
    lines = [json.dumps(ROWS[0]), json.dumps(ROWS[1]), bad, json.dumps(ROWS[2])]
    run = write_run(tmp_path / "run", None, lines)
    with pytest.raises(DataError, match=f"line 3: {re.escape(problem)}"):
        read_metrics(run / "metrics.jsonl")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "rewardhub report: error:" in err and "line 3" in err and "Traceback" not in err
    assert not (run / "report").exists()  # nothing written before the input is known to be good


def test_bad_run_directories_exit_2_with_a_message(tmp_path, capsys):
    cases = []
    cases.append((tmp_path / "missing", "does not exist"))
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file", "is a file"))
    (tmp_path / "empty-dir").mkdir()
    cases.append((tmp_path / "empty-dir", "has no metrics.jsonl (it is empty)"))
    cases.append((write_run(tmp_path / "no-rows", [], []), "holds no metrics rows yet"))
    outer = tmp_path / "outer"
    write_run(outer / "sft-warmup", ROWS)
    cases.append((outer, f"these directories in it do: {outer / 'sft-warmup'}"))
    for run, message in cases:
        assert main(["report", str(run)]) == 2, run
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, (run, err)
    with pytest.raises(ConfigError):
        write_report(tmp_path / "missing")
    with pytest.raises(DataError):
        write_report(tmp_path / "empty-dir")


def test_out_that_is_a_file_is_refused(tmp_path):
    run = write_run(tmp_path / "run", ROWS)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_report(run, tmp_path / "taken")


def test_without_matplotlib_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["report", str(write_run(tmp_path / "run", ROWS))]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.slow
def test_report_example_trains_and_writes_a_report(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "report_of_a_run.py"
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(example), "--steps", "4", "--out", str(out)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"report: {out / 'report' / 'report.html'}" in result.stdout
    assert_png(out / "report" / "reward.png")
    assert "component: sevens" in [d.label for f in plan(read_metrics(out / "metrics.jsonl"))
                                   if f.topic.name == "reward" for d in f.panels[0].lines]
