"""Core tests: small synthetic run folders and the toy plugin (``toyplugin/``), no torch, mediapipe or clips.

The toy plugin is an installed distribution as far as Python can tell (a dist-info folder on the path), so
the registry finds it through its entry point, in this process and in the child processes the tests start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TOY = Path(__file__).resolve().parent / "toyplugin"
sys.path.insert(0, str(TOY))
os.environ["PYTHONPATH"] = os.pathsep.join([str(TOY), *filter(None, [os.environ.get("PYTHONPATH")])])

from being_core.config import resolve  # noqa: E402
from being_core.ingest import ffmpeg_exe  # noqa: E402
from being_core.pipeline import Pipeline  # noqa: E402
from being_core.plugins import build_registry, get_plugin_manager  # noqa: E402

#: A 2.4 s clip at 32x32 (60 frames) decodes in well under a second.
INGEST = {"size": 32, "min_frames": 10, "val_split": 6}
TOY_STAGES = {"face_tracker": {"impl": "toy-full"}, "audio_encoder": {"impl": "toy"},
              "teeth_segmenter": {"impl": "toy"}, "trainer": {"impl": "toy"}}


@pytest.fixture(scope="session")
def toy_video(tmp_path_factory) -> Path:
    """60 frames of a moving test pattern with a 440 Hz tone."""
    import subprocess

    path = tmp_path_factory.mktemp("video") / "toy.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=48x32:rate=25:duration=2.4", "-f", "lavfi", "-i", "sine=frequency=440:duration=2.4",
                    "-shortest", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture
def registry():
    return build_registry(get_plugin_manager())


@pytest.fixture
def runs_log(tmp_path, monkeypatch) -> Path:
    """The file where toy stages append one line per run (works across processes)."""
    path = tmp_path / "toy-runs.jsonl"
    monkeypatch.setenv("BEING_TOY_RUNS", str(path))
    return path


def runs(path: Path, stage: str | None = None) -> int:
    import json

    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(1 for line in lines if stage is None or line["stage"] == stage)


def config(registry, stages: dict | None = None, **overrides):
    """A resolved config of toy stages; ``overrides`` replace whole stage selections (None skips one)."""
    selected = {**TOY_STAGES, **(stages or {}), **overrides}
    return resolve({"ingest": INGEST, "stages": {k: v for k, v in selected.items() if v is not None}}, registry,
                   "toy config")


def prepare(video: Path, root: Path, registry, train: bool = False, force=(), **stages):
    return Pipeline(root, config(registry, **stages), registry, force=set(force)).prepare(video, train=train)
