import json
import subprocess
import sys
import textwrap

import pytest
from conftest import resolve_stages

from being_core import AudioEncoder, StageConfig, TeethSegmenter, hookimpl
from being_core.errors import ConfigError, PluginError, UnknownImplementationError
from being_core.plugins import build_registry, get_plugin_manager, register
from being_core.registry import Registry


class _Echo(AudioEncoder):
    """Test encoder."""

    name = "echo"
    version = "1.0.0"
    outputs = ("aud_echo.npy",)


class _OtherEcho(AudioEncoder):
    name = "echo"
    version = "2.0.0"
    outputs = ("aud_echo.npy",)


def test_installed_plugins_are_registered(being_registry):
    assert "mel" in being_registry.names("audio_encoder")
    assert "mediapipe" in being_registry.names("face_tracker")
    assert "bright" in being_registry.names("teeth_segmenter")  # the example third-party plugin
    assert being_registry.implementation("teeth_segmenter", "bright").distribution == "being-teeth-bright"


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


def test_config_fields_must_be_described():
    with pytest.raises(TypeError, match="fields without a description: threshold"):
        class _Cfg(StageConfig):
            threshold: float = 0.5


def test_misspelled_hook_fails_loudly(being_plugin_manager):
    class Typo:
        @hookimpl
        def being_register_stage(self, registry):  # missing the final "s"
            pass

    with pytest.raises(PluginError) as err:
        register(being_plugin_manager, Typo(), name="typo")
    assert str(err.value).startswith("plugin 'typo' implements an unknown hook: ")
    assert "being_register_stage" in str(err.value)


def test_plugin_registers_through_the_hook(being_plugin_manager):
    class Plugin:
        @hookimpl
        def being_register_stages(self, registry):
            registry.add(_Echo, distribution="being-echo")

    register(being_plugin_manager, Plugin(), name="echo")
    assert build_registry(being_plugin_manager).names("audio_encoder") == ["echo"]


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
    registry = build_registry(get_plugin_manager())
    assert [(b.distribution, b.error) for b in registry.broken] == [
        ("being-fake-broken", "ImportError: needs libfoo.so")]
    resolve_stages(registry, audio_encoder={"impl": "mel"})  # unaffected
    with pytest.raises(ConfigError) as err:
        resolve_stages(registry, audio_encoder={"impl": "fake"})
    assert "Plugins that failed to load: being-fake-broken (entry point 'fake-broken'): " \
           "ImportError: needs libfoo.so." in str(err.value)


def test_unknown_implementation_message_lists_installed(being_registry):
    with pytest.raises(UnknownImplementationError) as err:
        being_registry.get("audio_encoder", "mell")
    installed = ", ".join(being_registry.names("audio_encoder"))
    assert str(err.value) == (f"unknown audio_encoder implementation 'mell'; installed: {installed}. "
                              f"Install the plugin that provides it (see `being plugins`).")


def test_listing_plugins_imports_no_model_stack(broken_plugin):
    code = textwrap.dedent("""
        import sys, io, contextlib
        from being_core.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["plugins", "--json"])
        heavy = sorted(m for m in ("torch", "mediapipe", "onnxruntime", "transformers", "librosa", "cv2")
                       if m in sys.modules)
        print(heavy)
        print(out.getvalue())
    """)
    env_path = str(broken_plugin)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    heavy, listing = proc.stdout.split("\n", 1)
    assert heavy == "[]"
    data = json.loads(listing)
    assert any(i["kind"] == "audio_encoder" and i["name"] == "mel" for i in data["implementations"])
    assert data["broken"][0]["distribution"] == "being-fake-broken"


def test_every_hook_is_documented_and_tested():
    """A hook without documentation or a test is a hook nobody can rely on."""
    from pathlib import Path

    from being_core import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("being_")]
    docs = (Path(__file__).parent.parent / "docs" / "writing-a-plugin.md").read_text()
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for hook in hooks:
        assert hook in docs, f"{hook} is not documented in docs/writing-a-plugin.md"
        assert f"def {hook}(" in tests, f"{hook} has no test"
