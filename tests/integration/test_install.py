"""Being installed from its built wheels into a fresh venv, far from the checkout, runs the whole job.

Nothing in the core or a plugin may read the source checkout at run time: the shipped configs are package
data (``-c cpu-small``), plugins are found by their entry points, and the run happens in another folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DISTRIBUTIONS = [".", "plugins/face-mediapipe", "plugins/audio-mel", "plugins/au-landmarks",
                 "plugins/teeth-landmarks", "plugins/trainer-gaussian-avatar", "containers"]


def sh(*cmd, cwd=None, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the wheels built from this checkout (and their dependencies from the index)."""
    work = tmp_path_factory.mktemp("install")
    wheels = work / "wheels"
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels,
       *(REPO / d for d in DISTRIBUTIONS))
    venv = work / "venv"
    sh(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    sh(*pip, "torch==2.13.0")  # the CPU build; an unpinned torch would be a multi-GB CUDA one
    sh(*pip, *sorted(wheels.glob("*.whl")))
    return venv


def test_the_wheels_alone_run_the_whole_job(installed, face5, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    being = installed / "bin" / "being"
    shown = sh(being, "config", "show", "-c", "cpu-small", cwd=elsewhere, env=env).stdout
    assert "size: 128" in shown and "impl: gaussian-avatar" in shown
    listing = sh(being, "plugins", cwd=elsewhere, env=env).stdout
    assert "being-docker" in listing and "being-face-mediapipe" in listing and str(REPO) not in listing
    proc = sh(being, "run", face5, "-o", "run", "-c", "cpu-small",
              "--set", "stages.face_tracker.config.iterations=40", "--set", "stages.face_tracker.config.focal_factors=[2.0]",
              "--set", "stages.trainer.config.coarse_iterations=30", "--set", "stages.trainer.config.fine_iterations=6",
              "--set", "stages.trainer.config.densify_from=10", "--set", "stages.trainer.config.densify_until=25",
              "--set", "stages.trainer.config.densify_interval=10", cwd=elsewhere, env=env)
    run = elsewhere / "run"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"done: {run}"
    assert lines[1].startswith("held-out metrics (gaussian-avatar): val_frames 12, psnr ")
    assert lines[2:] == [f"video: {run / 'avatar/val.mp4'}", f"next: being render {run} --audio new.wav -o says.mp4"]
    assert (run / "avatar" / "model.pt").is_file() and (run / "teeth_mask").is_dir() is False
    saved = (run / "config.yaml").read_text()
    assert "coarse_iterations: 30" in saved
    import json

    manifest = json.loads((run / "being.json").read_text())
    assert [k for k, v in manifest["stages"].items() if v["status"] == "done"] == [
        "face_tracker:locate", "ingest", "face_tracker", "audio_encoder", "au_extractor", "trainer"]
    site = sh(installed / "bin" / "python", "-c", "import being_core.configs as c; print(c.__file__)",
              cwd=elsewhere, env=env).stdout
    assert str(installed) in site and str(REPO) not in site
