"""The registry, plugin loading, and one plugin's bug staying that plugin's problem."""

from __future__ import annotations

import pytest
from conftest import TOY

from being_core import AudioEncoder, Runner, StageConfig, TeethSegmenter, hookimpl
from being_core.errors import PluginError, UnknownImplementationError
from being_core.plugins import build_registry, get_plugin_manager, register
from being_core.registry import Registry


class _Echo(AudioEncoder):
    """Test encoder."""

    name = "echo"
    version = "1.0.0"
    outputs = ("aud_echo.npy",)


class _OtherEcho(_Echo):
    version = "2.0.0"


def test_the_toy_plugin_is_found_through_its_entry_point(registry):
    impl = registry.implementation("teeth_segmenter", "toy")
    assert impl.distribution == "being-toy" and impl.cls.__module__ == "being_toy"
    assert {"inprocess", "subprocess", "toy-thread"} <= {r.cls.name for r in registry.runners()}
    assert registry.runner("inprocess").distribution == "being-core"


def test_duplicate_name_names_both_distributions():
    registry = Registry()
    registry.add(_Echo, distribution="being-echo")
    with pytest.raises(PluginError) as err:
        registry.add(_OtherEcho, distribution="acme-echo")
    assert str(err.value) == ("two plugins register audio_encoder implementation 'echo': being-echo and acme-echo; "
                              "uninstall one of them")


def test_bad_stage_class_is_rejected():
    class Nameless(TeethSegmenter):
        name = "Bad Name"
        version = "1"

    with pytest.raises(PluginError) as err:
        Registry().add(Nameless, distribution="acme")
    assert str(err.value) == ("stage test_bad_stage_class_is_rejected.<locals>.Nameless from acme: name 'Bad Name' "
                              "must be lower-case letters, digits and dashes; version '1' must look like 1.2.3")


def test_action_settings_must_name_actions_and_settings():
    from being_toy import ToyTrainer

    class Odd(ToyTrainer):
        name = "odd"
        action_settings = {"render": ("pause", "speed"), "export": ("value",)}

    assert Odd.check_definition() == ["action_settings['render'] names speed, not settings of its Config",
                                      "action_settings names 'export', which is not one of its actions"]


def test_config_fields_must_be_described():
    with pytest.raises(TypeError, match="fields without a description: threshold"):
        class _Cfg(StageConfig):
            threshold: float = 0.5


def test_the_config_type_comes_from_the_generic_parameter():
    from pydantic import Field

    class MyConfig(StageConfig):
        level: int = Field(3, description="A level.")

    class Mine(TeethSegmenter[MyConfig]):
        name = "mine"
        version = "1.0.0"

    assert Mine.Config is MyConfig and TeethSegmenter.Config is StageConfig


def test_misspelled_hook_fails_loudly(being_plugin_manager):
    class Typo:
        @hookimpl
        def being_register_stage(self, registry):  # missing the final "s"
            pass

    with pytest.raises(PluginError) as err:
        register(being_plugin_manager, Typo(), name="typo")
    assert str(err.value).startswith("plugin 'typo' implements an unknown hook: ")
    assert "being_register_stage" in str(err.value)


def test_a_malformed_class_breaks_only_its_own_plugin(being_plugin_manager):
    class Good:
        @hookimpl
        def being_register_stages(self, registry):
            registry.add(_Echo, distribution="being-echo")

    class Bad:
        @hookimpl
        def being_register_runners(self, registry):
            registry.add_runner(_Quick, distribution="acme")

        @hookimpl
        def being_register_stages(self, registry):
            class Broken(TeethSegmenter):
                name = "broken"
                version = "1.0"

            registry.add(Broken, distribution="acme")

    register(being_plugin_manager, Bad(), name="acme-bad")
    register(being_plugin_manager, Good(), name="echo")
    registry = build_registry(being_plugin_manager)
    assert registry.names("audio_encoder") == ["echo"]
    assert registry.names("teeth_segmenter") == []
    with pytest.raises(UnknownImplementationError):
        registry.runner("quick")  # rolled back with the rest of the broken plugin
    [broken] = registry.broken
    assert broken.entry_point == "acme-bad"
    assert broken.error.endswith("version '1.0' must look like 1.2.3")


class _Quick(Runner):
    """Test runner."""

    name = "quick"


def test_plugin_registers_through_the_hooks(being_plugin_manager):
    class Plugin:
        @hookimpl
        def being_register_stages(self, registry):
            registry.add(_Echo, distribution="being-echo")

        @hookimpl
        def being_register_runners(self, registry):
            registry.add_runner(_Quick, distribution="being-echo")

    register(being_plugin_manager, Plugin(), name="echo")
    registry = build_registry(being_plugin_manager)
    assert registry.names("audio_encoder") == ["echo"] and registry.runner("quick").cls is _Quick


def test_a_plugin_adds_a_command(being_plugin_manager):
    from being_core import Command
    from being_core.plugins import collect_commands

    class Hello(Command):
        name = "hello"
        help = "say hello"

    class Plugin:
        @hookimpl
        def being_register_commands(self, commands):
            commands.add(Hello())

    class Clash:
        @hookimpl
        def being_register_commands(self, commands):
            commands.add(type("Prepare", (Command,), {"name": "prepare", "help": "x"})())

    register(being_plugin_manager, Plugin(), name="hello")
    register(being_plugin_manager, Clash(), name="clash")
    broken = []
    commands = collect_commands(being_plugin_manager, {"prepare"}, broken)
    assert [c.name for c in commands.all()] == ["hello"]
    assert [(b.entry_point, b.error) for b in broken] == [
        ("clash", "two commands are named 'prepare'; a plugin's command must not reuse a name")]


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    """A real installed distribution (dist-info on sys.path) whose plugin module fails to import."""
    info = tmp_path / "being_fake_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: being-fake-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[being]\nfake-broken = being_fake_broken_mod\n")
    (tmp_path / "being_fake_broken_mod.py").write_text("raise ImportError('needs libfoo.so')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_plugin_is_listed_and_fails_only_runs_that_select_it(broken_plugin):
    from being_core.config import resolve
    from being_core.errors import ConfigError

    registry = build_registry(get_plugin_manager())
    assert [(b.distribution, b.error) for b in registry.broken] == [
        ("being-fake-broken", "ImportError: needs libfoo.so")]
    resolve({"stages": {"audio_encoder": {"impl": "toy"}}}, registry)  # unaffected
    with pytest.raises(ConfigError) as err:
        resolve({"stages": {"audio_encoder": {"impl": "fake"}}}, registry)
    assert "Plugins that failed to load: being-fake-broken (entry point 'fake-broken'): " \
           "ImportError: needs libfoo.so." in str(err.value)


def test_unknown_implementation_message_lists_installed(registry):
    with pytest.raises(UnknownImplementationError) as err:
        registry.get("audio_encoder", "mell")
    installed = ", ".join(registry.names("audio_encoder"))
    assert str(err.value) == (f"unknown audio_encoder implementation 'mell'; installed: {installed}. "
                              f"Install the plugin that provides it (see `being plugins`).")


def test_every_hook_is_documented_and_tested():
    """A hook without documentation or a test is a hook nobody can rely on."""
    from pathlib import Path

    from being_core import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("being_")]
    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "writing-a-plugin.md").read_text()
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    tests += (TOY / "being_toy.py").read_text()
    assert sorted(hooks) == ["being_register_commands", "being_register_runners", "being_register_stages"]
    for hook in hooks:
        assert hook in docs, f"{hook} is not documented in docs/writing-a-plugin.md"
        assert f"def {hook}(" in tests, f"{hook} has no test"
