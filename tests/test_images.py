"""Image building pieces that need no daemon: apt sources, locks, specs, Dockerfiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from being_core import images
from being_core.errors import UsageError
from being_core.plugins import load_registry

from conftest import REPO


def test_host_apt_source_reads_deb822_and_one_line_formats(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert images.host_apt_source(etc) == ("http://mirror.example/debian", "bookworm")
    (etc / "sources.list.d" / "debian.sources").unlink()
    (etc / "sources.list").write_text("# old style\ndeb [arch=amd64] http://archive.example/ubuntu jammy main\n")
    assert images.host_apt_source(etc) == ("http://archive.example/ubuntu", "jammy")


def test_host_apt_source_without_any_archive_says_what_to_do(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(UsageError) as err:
        images.host_apt_source(tmp_path)
    assert str(err.value) == (f"found no Debian or Ubuntu archive in {tmp_path}/sources.list(.d) to bootstrap the base "
                              "image from; pass --base IMAGE (e.g. python:3.11-slim) where a registry is reachable")


def test_read_lock_splits_pins_and_local_sources(tmp_path):
    lock = tmp_path / "requirements-cpu.lock"
    lock.write_text("# header\n# local being-core .\n# local being-x plugins/x\nnumpy==1.26.4\ntorch==2.13.0+cpu\n")
    assert images.read_lock(lock) == (["numpy==1.26.4", "torch==2.13.0+cpu"],
                                      [("being-core", "."), ("being-x", "plugins/x")])
    lock.write_text("numpy>=1.2\n")
    with pytest.raises(UsageError) as err:
        images.read_lock(lock)
    assert str(err.value) == f"{lock}:1: expected NAME==VERSION, got 'numpy>=1.2'"
    with pytest.raises(UsageError) as err:
        images.read_lock(tmp_path / "missing" / "requirements-cpu.lock")
    assert str(err.value).endswith("does not exist; create it with `being images lock missing`")


def test_every_installed_implementation_has_a_dockerfile_and_a_valid_lock():
    registry = load_registry()
    specs = images.specs(registry)
    assert {s.slug for s in specs} == {i.cls.slug() for i in registry.all()}
    for spec in specs:
        dockerfile = (spec.folder / "Dockerfile").read_text()
        assert 'ENTRYPOINT ["being-stage"]' in dockerfile and "USER being" in dockerfile, spec.slug
        pins, local = images.read_lock(spec.lock)
        names = {name for name, _ in local}
        assert {"being-core", spec.impl.distribution} <= names, spec.slug
        for _name, folder in local:
            assert (REPO / folder / "pyproject.toml").is_file(), (spec.slug, folder)
        assert not [p for p in pins if p.lower().startswith(("opencv-python==", "opencv-contrib-python=="))]


def test_image_tags_carry_the_version_and_the_variant():
    impl = next(i for i in load_registry().all() if i.cls.slug() == "face-mediapipe")
    assert images.ImageSpec(impl).tag == f"being/face-mediapipe:{impl.cls.version}"
    assert images.ImageSpec(impl, "cuda").tag == f"being/face-mediapipe:{impl.cls.version}-cuda"
    assert images.ImageSpec(impl, "cuda").lock.name == "requirements-cuda.lock"


def test_unknown_names_and_variants_are_refused():
    registry = load_registry()
    with pytest.raises(UsageError) as err:
        images.specs(registry, ["face-openpose"])
    assert str(err.value).startswith("no installed implementation 'face-openpose'; images exist for: au-landmarks, ")
    with pytest.raises(UsageError) as err:
        images.specs(registry, [], "rocm")
    assert str(err.value) == "unknown image variant 'rocm'; use cpu or cuda"


def test_plugin_digest_follows_the_code(tmp_path, monkeypatch):
    pkg = tmp_path / "being_digest_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = images.package_digest("being_digest_probe")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    assert images.package_digest("being_digest_probe") == first
    (pkg / "__init__.py").write_text("X = 2\n")
    assert images.package_digest("being_digest_probe") != first


def test_build_context_wheels_come_from_clean_source_copies(tmp_path):
    (REPO / "tests" / "probe-plugin" / "build" / "lib").mkdir(parents=True, exist_ok=True)
    stale = REPO / "tests" / "probe-plugin" / "build" / "lib" / "stale_module.py"
    stale.write_text("raise SystemExit('stale')\n")
    try:
        wheel = images.build_local_wheel(REPO / "tests" / "probe-plugin", tmp_path)
    finally:
        shutil.rmtree(REPO / "tests" / "probe-plugin" / "build")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "being_test_probe/__init__.py" in names and not [n for n in names if "stale_module" in n]
    assert Path(wheel).name.startswith("being_test_probe-0.1.0-")
