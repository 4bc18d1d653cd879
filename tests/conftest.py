"""Shared fixtures. Tests run offline, on CPU, with only rewardhub's own plugins autoloaded."""

from __future__ import annotations

import os

# Set before rewardhub is imported anywhere: no hub access, and only the built-in entry points load, so a
# third-party plugin installed on the machine cannot change test results.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["REWARDHUB_LOAD_PLUGINS"] = "tasks,basic,verifier,reward_model,judge,feedback"

import pytest

from rewardhub.plugins import reset_plugin_manager

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="session", autouse=True)
def rewardhub_home(tmp_path_factory):
    """Keep the built-in tiny model (and anything else rewardhub caches) inside the test session."""
    home = tmp_path_factory.mktemp("rewardhub_home")
    os.environ["REWARDHUB_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A very small Llama + char tokenizer saved with save_pretrained (loaded back like any checkpoint)."""
    from rewardhub.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, **SMALL)


@pytest.fixture
def fresh_plugins():
    """A plugin manager rebuilt from entry points for this test, and rebuilt again afterwards."""
    reset_plugin_manager()
    from rewardhub.plugins import get_plugin_manager

    yield get_plugin_manager()
    reset_plugin_manager()


# Helpers shared by the recipe tests (import them: ``from conftest import load_weights, records``).

def load_weights(out, name="model.safetensors"):
    """The state dict a run saved in ``out/model``."""
    from safetensors.torch import load_file

    return load_file(str(out / "model" / name))


def records(out, kind="train"):
    """The ``kind`` rows (train, eval) of a run's ``metrics.jsonl``."""
    import json

    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]
