"""Image building pieces that need no daemon: apt sources, locks, specs, Dockerfiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from being_core.errors import UsageError
from being_core.plugins import load_registry
from being_docker import images


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


def test_read_lock_reads_pins_and_names_the_bad_line(tmp_path):
    lock = tmp_path / "being_x" / "image" / "requirements-cpu.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("# header\nbeing-core==0.1.0\nnumpy==1.26.4\ntorch===2.13.0\n")
    assert images.read_lock(lock, "x") == ["being-core==0.1.0", "numpy==1.26.4", "torch===2.13.0"]
    lock.write_text("numpy>=1.2\n")
    with pytest.raises(UsageError) as err:
        images.read_lock(lock, "x")
    assert str(err.value) == f"{lock}:1: expected NAME==VERSION, got 'numpy>=1.2'"
    with pytest.raises(UsageError) as err:
        images.read_lock(tmp_path / "being_missing" / "image" / "requirements-cpu.lock", "teeth-missing")
    assert str(err.value).endswith("does not exist; create it with `being images lock teeth-missing`")


def test_every_installed_implementation_ships_a_lock_of_its_own_package():
    """Each plugin's image is defined by files installed with it: no Being checkout is needed to build it."""
    registry = load_registry()
    specs = images.specs(registry)
    assert {s.slug for s in specs} == {i.cls.slug() for i in registry.all()}
    for spec in specs:
        package = spec.impl.cls.__module__.split(".")[0]
        assert spec.lock.parent == images.package_files(package) / "image", spec.slug
        pins = images.read_lock(spec.lock, spec.slug)
        names = {p.split("==")[0] for p in pins}
        version = __import__("importlib.metadata", fromlist=["version"]).version
        assert f"being-core=={version('being-core')}" in pins, spec.slug
        assert f"{spec.impl.distribution}=={version(spec.impl.distribution)}" in pins, spec.slug
        assert not names & {"opencv-python", "opencv-contrib-python"}, spec.slug
        dockerfile = spec.dockerfile.read_text()
        assert 'ENTRYPOINT ["being-stage"]' in dockerfile and "USER being" in dockerfile, spec.slug


def test_image_tags_carry_the_version_and_the_variant():
    impl = next(i for i in load_registry().all() if i.cls.slug() == "face-mediapipe")
    assert images.ImageSpec(impl).tag == f"being/face-mediapipe:{impl.cls.version}"
    assert images.ImageSpec(impl, "cuda").tag == f"being/face-mediapipe:{impl.cls.version}-cuda"
    assert images.ImageSpec(impl, "cuda").lock.name == "requirements-cuda.lock"
    assert images.ImageSpec(impl).dockerfile == images.package_files("being_docker") / "Dockerfile"


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


def test_a_lock_is_written_into_the_plugins_source_whatever_its_layout(tmp_path):
    installed = tmp_path / "site-packages" / "being_x" / "image" / "requirements-cpu.lock"
    flat, src = tmp_path / "flat", tmp_path / "srclayout"
    (flat / "being_x").mkdir(parents=True)
    (flat / "being_x" / "__init__.py").write_text("")
    (src / "src" / "being_x").mkdir(parents=True)
    (src / "src" / "being_x" / "__init__.py").write_text("")
    assert images.lock_target("being_x", installed, flat) == flat / "being_x" / "image" / "requirements-cpu.lock"
    assert images.lock_target("being_x", installed, src) == src / "src" / "being_x" / "image" / "requirements-cpu.lock"
    editable = flat / "being_x" / "image" / "requirements-cpu.lock"
    assert images.lock_target("being_x", editable, flat) == editable
    with pytest.raises(UsageError) as err:
        images.lock_target("being_y", installed, flat)
    assert str(err.value) == (f"cannot find the package being_y in {flat} (neither being_y/ nor src/being_y/) to "
                              "write its lock into")


def test_sources_files_name_pins_and_their_environment_and_the_bad_line(tmp_path):
    path = tmp_path / "sources-cuda.txt"
    path.write_text("# compiled in the image\ngsplat==1.5.3 BUILD_NO_CUDA=1  # its kernels\n\nninja==1.13.2\n")
    assert images.read_sources(path) == [("gsplat==1.5.3", {"BUILD_NO_CUDA": "1"}), ("ninja==1.13.2", {})]
    path.write_text("gsplat==1.5.3 --no-cuda\n")
    with pytest.raises(UsageError) as err:
        images.read_sources(path)
    assert str(err.value) == f"{path}:1: expected NAME==VERSION [VAR=VALUE ...], got 'gsplat==1.5.3 --no-cuda'"


def test_the_trainers_cuda_image_compiles_gsplat_with_the_toolkit_of_its_torch():
    """The CUDA trainer image compiles the lock's own gsplat, with a CUDA compiler of the same release as the
    lock's CUDA runtime; the CPU image compiles nothing."""
    impl = next(i for i in load_registry().all() if i.cls.slug() == "trainer-gaussian-avatar")
    cuda, cpu = images.ImageSpec(impl, "cuda"), images.ImageSpec(impl, "cpu")
    lock = images.read_lock(cuda.lock, cuda.slug)
    assert [pin for pin, _ in cuda.sources] == ["gsplat==1.5.3"] and "gsplat==1.5.3" in lock
    runtime = next(p for p in lock if p.startswith("nvidia-cuda-runtime=="))
    toolkit = dict(p.split("==") for p in cuda.toolchain)
    assert set(toolkit) == {"nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl"}
    release = ".".join(runtime.split("==")[1].split(".")[:2])
    assert all(v.startswith(release + ".") for v in toolkit.values()), (runtime, toolkit)
    assert cpu.sources == [] and cpu.toolchain == []
    assert cuda.dockerfile == cpu.dockerfile == images.package_files("being_docker") / "Dockerfile"
    assert cuda.check is not None and "gsplat.cuda._backend" in cuda.check.read_text() and cpu.check is None


class _Spec(images.ImageSpec):
    """An image spec whose files are in a folder of the test's."""

    root: Path = Path()

    @property
    def folder(self) -> Path:
        return self.root


def test_an_image_that_compiles_needs_its_sources_pinned_and_a_compiler_base(tmp_path):
    impl = next(i for i in load_registry().all() if i.cls.slug() == "trainer-gaussian-avatar")
    _Spec.root = tmp_path
    spec = _Spec(impl, "cuda")
    (tmp_path / "requirements-cuda.lock").write_text("gsplat==1.5.3\n")
    (tmp_path / "sources-cuda.txt").write_text("gsplat==1.5.2\n")
    with pytest.raises(UsageError) as err:
        images.build(None, spec, "being/base:bookworm", None, force=True)
    assert str(err.value) == (f"{tmp_path}/sources-cuda.txt: gsplat==1.5.2 not pinned in "
                              f"{tmp_path}/requirements-cuda.lock; the sources must be the lock's versions")
    (tmp_path / "sources-cuda.txt").write_text("gsplat==1.5.3\n")
    with pytest.raises(UsageError) as err:
        images.build(None, spec, "being/base:bookworm", None, force=True)
    assert str(err.value) == (f"{spec.tag} compiles gsplat==1.5.3 while it is built and needs a base with a "
                              "compiler (devel_base)")
