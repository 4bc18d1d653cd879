"""The example plugin package under examples/ is pip-installed and found through its entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "third_party_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example into a private target directory (the test leaves site-packages untouched)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(PLUGIN)],
                   check=True, cwd=build, env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    return target


def run_cli(installed, *args, load=None):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("REWARDHUB_LOAD_PLUGINS")
    if load is not None:
        env["REWARDHUB_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "rewardhub.cli.main", *args], env=env, capture_output=True,
                          text=True)


def test_installed_plugin_is_listed_with_its_package_and_version(installed):
    out = run_cli(installed, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    entries = {(p["kind"], p["name"]): p for p in json.loads(out.stdout)["plugins"]}
    keyword = entries[("reward", "keyword")]
    assert (keyword["package"], keyword["version"]) == ("rewardhub-keyword", "0.2.0")
    assert entries[("verifier", "ends_with_period")]["package"] == "rewardhub-keyword"
    assert ("reward", "exact-match") in entries  # built-ins load the same way, side by side
    table = run_cli(installed, "plugins")
    assert "keyword" in table.stdout and "rewardhub-keyword" in table.stdout


def test_installed_plugin_scores_through_the_cli(installed, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text('{"prompt": "ask", "completion": "please help, thanks"}\n{"prompt": "ask", "completion": "no"}\n')
    out = run_cli(installed, "score", "--reward=keyword", "--reward-arg", "words=please,thanks",
                  "--data", str(data), "--output", str(tmp_path / "s.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["status"]) for r in rows] == [(1.0, "ok"), (0.0, "wrong")]


def test_plugin_can_be_deselected(installed):
    out = run_cli(installed, "plugins", "--json", load="basic")
    names = {p["name"] for p in json.loads(out.stdout)["plugins"]}
    assert "keyword" not in names and "length" in names


def test_installed_custom_verifier_is_used_by_the_verifier_provider(installed, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text('{"completion": "Done.", "verifier": "ends_with_period"}\n'
                    '{"completion": "Done", "verifier": "ends_with_period"}\n')
    out = run_cli(installed, "score", "--reward=verifier", "--data", str(data), "--output", str(tmp_path / "s.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["status"]) for r in rows] == [(1.0, "ok"), (0.0, "wrong")]
