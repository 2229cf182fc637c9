from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from being_core.config import load, resolve
from being_core.ingest import ffmpeg_exe
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("BEING_TESTDATA", str(REPO.parent / "shared" / "testdata"))
#: The example third-party plugin's config (examples/teeth-bright): the default run plus its segmenter.
EXAMPLE_CONFIG = REPO / "examples" / "teeth-bright" / "config.yaml"
FAST_FACE = {"iterations": 80, "focal_factors": [1.5, 3.0]}


def prepare(video: Path, root: Path, overrides: list[str] = (), config: Path | None = None):
    registry = load_registry()
    resolved = load(config, registry, list(overrides))  # None: the shipped default
    return Pipeline(root, resolved, registry).prepare(video)


@pytest.fixture(scope="session")
def face5(being_testdata) -> Path:
    return being_testdata / "videos" / "videoretalking_face5.mp4"


@pytest.fixture(scope="session")
def prepared_face5(tmp_path_factory, face5) -> Path:
    """videoretalking_face5.mp4 (122 frames) prepared with the default config plus the example segmenter."""
    root = tmp_path_factory.mktemp("face5") / "run"
    prepare(face5, root, [f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()],
            config=EXAMPLE_CONFIG)
    return root


@pytest.fixture
def prepared_copy(prepared_face5, tmp_path) -> Path:
    """A private copy of the prepared clip that a test may change."""
    root = tmp_path / "run"
    shutil.copytree(prepared_face5, root)
    return root


def make_video(path: Path, *args: str) -> Path:
    """Generate a small video with ffmpeg (for cases no real clip has: no face, a still photo, ...)."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args, str(path)], check=True)
    return path


def resolve_stages(registry, **stages):
    return resolve({"stages": stages}, registry, "test config")
