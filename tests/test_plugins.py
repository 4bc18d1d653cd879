"""The plugin contract: in-test plugins, entry-point discovery, error isolation, duplicates, selection, and a core
that imports no plugin."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rewardhub import Reward, RewardProvider, hookimpl, verifier
from rewardhub.errors import PluginConflictError, UnknownNameError
from rewardhub.plugins import PluginManager, build_registry, decorated_verifiers, get_plugin_manager


class Always(RewardProvider):
    """Always the same reward."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.value = value

    def score(self, samples):
        return [Reward(self.value) for _ in samples]


class InTestPlugin:
    @hookimpl
    def rewardhub_register_rewards(self, register):
        register("always", Always)

    @hookimpl
    def rewardhub_register_verifiers(self, register):
        register("nonempty", lambda completion, row: bool(completion.strip()), description="non-empty")


class RaisingPlugin:
    @hookimpl
    def rewardhub_register_rewards(self, register):
        raise RuntimeError("database unreachable")


@pytest.fixture
def pm():
    manager = get_plugin_manager()
    manager.register(InTestPlugin(), name="in_test")
    yield manager
    manager.unregister(name="in_test")


def test_in_test_plugin_registers_and_unregisters(pm):
    registry = build_registry(pm)
    entry = registry.get("reward", "always")
    assert entry.obj is Always and entry.plugin == "in_test"
    assert "registered in code" in entry.package
    assert registry.get("verifier", "nonempty").description == "non-empty"
    pm.unregister(name="in_test")
    with pytest.raises(UnknownNameError, match=r"Available rewards: .*exact-match"):
        build_registry(pm).get("reward", "always")
    pm.register(InTestPlugin(), name="in_test")  # the fixture unregisters it again


def test_a_hook_that_raises_is_reported_and_the_rest_load(pm):
    pm.register(RaisingPlugin(), name="raising")
    try:
        registry = build_registry(pm)
    finally:
        pm.unregister(name="raising")
    assert registry.get("reward", "always").obj is Always
    [failure] = [f for f in registry.failures if f.plugin == "raising"]
    assert "database unreachable" in failure.error and "rewardhub_register_rewards" in failure.error


def test_unknown_name_lists_what_is_available(pm):
    with pytest.raises(UnknownNameError) as err:
        build_registry(pm).get("reward", "verifer")
    assert "'verifer'" in str(err.value) and "always" in str(err.value) and "length" in str(err.value)


def test_decorated_verifiers_are_found_in_a_module(tmp_path):
    module = tmp_path / "my_checks.py"
    module.write_text(textwrap.dedent("""
        from rewardhub import verifier

        @verifier("polite")
        def polite(completion, row):
            return completion.endswith("thank you.")

        def helper(x):
            return x
    """))
    from rewardhub.reward_resolution import load_python_file

    found = decorated_verifiers(load_python_file(module))
    assert [name for name, _ in found] == ["polite"]
    assert found[0][1]("... thank you.", {}) is True
    with pytest.raises(TypeError):
        verifier("")


def _fake_distribution(root, dist, module, body, entry_name=None):
    """A minimal installed distribution on sys.path: a module plus dist-info with a rewardhub entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[rewardhub]\n{entry_name or module} = {module}\n")


GOOD_PLUGIN = """
    from rewardhub import Reward, RewardProvider, hookimpl

    class Shout(RewardProvider):
        def score(self, samples):
            return [Reward(float(s.completion.isupper())) for s in samples]

    @hookimpl
    def rewardhub_register_rewards(register):
        register("shout", Shout)
"""


def test_entry_points_discovery_isolation_and_selection(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "good-plugin", "good_plugin", GOOD_PLUGIN)
    _fake_distribution(tmp_path, "broken-plugin", "broken_plugin", "import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    manager = PluginManager()
    manager.load_entry_points({"good_plugin", "broken_plugin", "basic"})
    registry = build_registry(manager)
    shout = registry.get("reward", "shout")
    assert (shout.package, shout.version, shout.plugin) == ("good-plugin", "1.2.3", "good_plugin")
    assert registry.get("reward", "length").package == "rewardhub"
    [failure] = registry.failures
    assert failure.plugin == "broken_plugin" and failure.package == "broken-plugin"
    assert "not_a_real_module_xyz" in failure.error

    only_basic = PluginManager()
    only_basic.load_entry_points({"basic"})
    assert "shout" not in build_registry(only_basic).names("reward")
    nothing = PluginManager()
    nothing.load_entry_points(set())
    assert build_registry(nothing).names("reward") == []


def test_two_packages_registering_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "first-pkg", "first_plugin", GOOD_PLUGIN)
    _fake_distribution(tmp_path, "second-pkg", "second_plugin", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    manager = PluginManager()
    manager.load_entry_points({"first_plugin", "second_plugin"})
    with pytest.raises(PluginConflictError) as err:
        build_registry(manager)
    assert "first-pkg" in str(err.value) and "second-pkg" in str(err.value) and "'shout'" in str(err.value)


def test_env_var_selects_plugins_for_the_cli(tmp_path):
    env_all = {"REWARDHUB_LOAD_PLUGINS": "basic,tasks", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "rewardhub.cli.main", "plugins", "--json"], env=env_all,
                         capture_output=True, text=True, check=True)
    names = {p["name"] for p in json.loads(out.stdout)["plugins"]}
    assert {"exact-match", "length", "arithmetic"} <= names
    out = subprocess.run([sys.executable, "-m", "rewardhub.cli.main", "plugins", "--json"],
                         env={**env_all, "REWARDHUB_LOAD_PLUGINS": ""}, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["plugins"] == []


ROOT = Path(__file__).resolve().parents[1]


def _imported_names(tree: ast.AST):
    """(line, module) for each import statement and each importlib/__import__ call with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module or ""
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__", "find_spec") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def test_the_core_imports_no_plugin_package():
    """The core knows no reward source: plugins (built-in ones too) come in through entry points only."""
    plugin_packages = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
    assert {"rewardhub_judge", "rewardhub_feedback"} <= plugin_packages  # the scan looks where plugins are
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / "rewardhub").rglob("*.py"))
             for line, module in _imported_names(ast.parse(path.read_text(), str(path)))
             if module.split(".")[0] in plugin_packages or module.startswith("rewardhub_")]
    assert found == []
