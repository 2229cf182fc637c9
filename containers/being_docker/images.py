"""Container images: one per implementation, built without any image registry and without Being's checkout.

Every implementation's package ships its own pinned lock, ``<package>/image/requirements-<variant>.lock``
(and, when it needs one, its own ``image/Dockerfile``; otherwise the template of this package is used), so a
third-party plugin gets an image by being installed. How an image is made (``being images build face-mediapipe``):

1. The base image ``being/base:<suite>`` is bootstrapped once with debootstrap from the mirror and suite in
   the host's own apt sources, then ``docker import``-ed (or ``--base python:3.11-slim`` where a registry is
   reachable).
2. Each pin of the lock becomes a wheel. A distribution installed here from a source folder (the core and the
   plugins of a development checkout, editable or not) is built from that folder; every other pin is fetched
   with the host's pip settings (index, find-links, CA bundle) into a shared cache.
3. The build context is the Dockerfile plus exactly those wheels; the build runs with networking off, so
   nothing private (CA bundle, index URLs) reaches any layer. Labels record the versions and a digest of
   the plugin's and the core's code, which is how a stale image is recognised.

An image may compile some of its packages while it is built (the trainer's CUDA image compiles gsplat's
kernels, so that nothing compiles on a node): ``image/sources-<variant>.txt`` names the pins of the lock that
come as source distributions instead of wheels (``sources-<variant>/`` in the context), and
``image/build-<variant>.txt`` the wheels only the compilation needs (a compiler toolkit, ``build-<variant>/``).
Such an image builds on a second base with a C++ compiler and Python's headers, ``being/base-devel:<suite>``,
bootstrapped the same way, and the template compiles them in its install stage. ``image/check-<variant>.py``
(``check-<variant>.py`` in the context) runs last with the image's Python, e.g. to prove the compiled kernels import.
Being's own wheels (``being-<variant>/``) go into the image's last layers, so that a change to Being's code does
not undo the layers below (the compiled ones least of all).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from pathlib import Path
from typing import Any

from being_core import __version__
from being_core.errors import BeingError, UsageError
from being_core.progress import Reporter
from being_core.registry import Implementation, Registry

log = logging.getLogger("being.images")

LABEL = "being.image"  # every image Being builds carries this label (value: the implementation slug)
BASE_REPO = "being/base"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEVEL_REPO = "being/base-devel"
DEVEL_PACKAGES = ("g++", "python3-dev")  # what compiling a Python extension needs, on top of the base
VARIANTS = ("cpu", "cuda")
# Containers never open a window: the headless OpenCV builds have no X11/OpenGL system dependencies.
HEADLESS = {"opencv-python": "opencv-python-headless", "opencv-contrib-python": "opencv-contrib-python-headless"}


class DockerUnavailable(UsageError):
    """No Docker SDK or no reachable daemon."""


def package_files(name: str) -> Path:
    """The installed folder of a package (``being_docker``, a plugin's package)."""
    return Path(str(resources.files(name)))


def image_dir(impl: Implementation) -> Path:
    """``<package>/image`` of the package that defines the implementation: its locks (and Dockerfile)."""
    return package_files(impl.cls.__module__.split(".")[0]) / "image"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "being"


def client():
    """A docker SDK client whose daemon answered a ping, or a DockerUnavailable that says what to do."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailable("the docker runner and `being images` need the docker SDK: "
                                "pip install 'being-core[docker]'") from None
    try:
        c = docker.from_env(timeout=120)
        c.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, FileNotFoundError of the socket
        raise DockerUnavailable(
            f"cannot reach the Docker daemon ({_short(exc)}); start it (e.g. `dockerd &` as root, or "
            f"`systemctl start docker`) and check DOCKER_HOST, or choose runner: inprocess") from None
    return c


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --- code digests: how a stale image is recognised ---------------------------------------------------


def package_digest(module: str) -> str:
    """sha256 over every file of an importable package (``__pycache__`` excluded), paths included."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BeingError(f"cannot find the package {module} to digest")
    root = Path(list(spec.submodule_search_locations)[0])
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.endswith((".pyc", ".pyo")):
            continue
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _modules_of(dist: str) -> list[str]:
    """Top-level packages of an installed distribution (from its ``being`` entry points, else top_level.txt)."""
    d = importlib.metadata.distribution(dist)
    mods = sorted({ep.value.split(":")[0].split(".")[0] for ep in d.entry_points if ep.group == "being"})
    if not mods:
        mods = sorted(line.strip() for line in (d.read_text("top_level.txt") or "").splitlines() if line.strip())
    return mods or [dist.replace("-", "_")]


def code_digest(dist: str) -> str:
    """Digest of an installed distribution's code as this host would run it."""
    if dist == "being-core":
        return package_digest("being_core")
    return hashlib.sha256("".join(package_digest(m) for m in _modules_of(dist)).encode()).hexdigest()[:16]


# --- what an image is for ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    impl: Implementation
    variant: str = "cpu"

    @property
    def slug(self) -> str:
        return self.impl.cls.slug()

    @property
    def tag(self) -> str:
        tag = self.impl.cls.image()
        return tag if self.variant == "cpu" else f"{tag}-{self.variant}"

    @property
    def folder(self) -> Path:
        return image_dir(self.impl)

    @property
    def lock(self) -> Path:
        return self.folder / f"requirements-{self.variant}.lock"

    @property
    def sources(self) -> list[tuple[str, dict[str, str]]]:
        """The lock's packages compiled in the image from their source distribution (:func:`read_sources` of
        ``image/sources-<variant>.txt``); none when the file does not exist."""
        path = self.folder / f"sources-{self.variant}.txt"
        return read_sources(path) if path.is_file() else []

    @property
    def toolchain(self) -> list[str]:
        """Pins of the wheels only the compilation of :attr:`sources` needs (``image/build-<variant>.txt``)."""
        path = self.folder / f"build-{self.variant}.txt"
        return read_lock(path, self.slug) if path.is_file() else []

    @property
    def check(self) -> Path | None:
        """``image/check-<variant>.py``: run with the image's Python at the end of its build (None: nothing)."""
        path = self.folder / f"check-{self.variant}.py"
        return path if path.is_file() else None

    @property
    def dockerfile(self) -> Path:
        """The implementation's own ``image/Dockerfile``, else the template every image shares."""
        own = self.folder / "Dockerfile"
        return own if own.is_file() else package_files("being_docker") / "Dockerfile"

    def identity(self) -> dict[str, str]:
        """The labels an image must match to count as current for the installed plugin: its version and code
        digest, the core's version (an edit of the core's own code does not force every image to be rebuilt), and
        the digest of the Dockerfile it is built from (the shared template, which is not the plugin's code)."""
        return {"being.version": self.impl.cls.version, "being.plugin-digest": code_digest(self.impl.distribution),
                "being.core-version": __version__,
                "being.recipe-digest": hashlib.sha256(self.dockerfile.read_bytes()).hexdigest()[:16]}

    def labels(self) -> dict[str, str]:
        """Every label a built image carries: its identity, what it is, and the core's code digest (a record)."""
        cls = self.impl.cls
        return {LABEL: self.slug, "being.kind": str(cls.kind), "being.impl": cls.name,
                "being.distribution": self.impl.distribution, "being.variant": self.variant, **self.identity(),
                "being.core-digest": code_digest("being-core")}


def specs(registry: Registry, names: list[str] | None = None, variant: str = "cpu") -> list[ImageSpec]:
    """Image specs for ``names`` (slugs like ``face-mediapipe``, or implementation names); all when empty."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown image variant '{variant}'; use {' or '.join(VARIANTS)}")
    by_slug = {i.cls.slug(): i for i in registry.all()}
    if not names:
        return [spec for _, i in sorted(by_slug.items()) if (spec := ImageSpec(i, variant)).lock.is_file()]
    out = []
    for name in names:
        impl = by_slug.get(name) or next((i for i in registry.all() if i.cls.name == name), None)
        if impl is None:
            raise UsageError(f"no installed implementation '{name}'; images exist for: {', '.join(sorted(by_slug))}")
        out.append(ImageSpec(impl, variant))
    return out


def stale_reason(image_labels: dict[str, str], spec: ImageSpec) -> str | None:
    """Why an image does not match the installed plugin (None when it does); see :meth:`ImageSpec.identity`."""
    want = spec.identity()
    for key, what in (("being.version", "version"), ("being.plugin-digest", "plugin code"),
                      ("being.core-version", "core version"), ("being.recipe-digest", "Dockerfile")):
        if image_labels.get(key) != want[key]:
            return f"{what} differs (image {image_labels.get(key) or 'unknown'}, installed {want[key]})"
    return None


# --- the base image ---------------------------------------------------------------------------------


def host_apt_source(etc: Path = Path("/etc/apt")) -> tuple[str, str]:
    """(mirror URI, suite) of the host's first Debian/Ubuntu main archive in its apt sources."""
    entries: list[tuple[str, str]] = []
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("URIs") and fields.get("Suites"):
                entries += [(fields["URIs"].split()[0], suite) for suite in fields["Suites"].split()]
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    entries.append((parts[1], parts[2]))
    for uri, suite in entries:
        if "-" not in suite and "security" not in uri:
            return uri.rstrip("/"), suite
    raise UsageError(f"found no Debian or Ubuntu archive in {etc}/sources.list(.d) to bootstrap the base image "
                     f"from; pass --base IMAGE (e.g. python:3.11-slim) where a registry is reachable")


def base_tag(suite: str, devel: bool = False) -> str:
    return f"{DEVEL_REPO if devel else BASE_REPO}:{suite}"


def ensure_base(c, progress: Reporter, force: bool = False, devel: bool = False) -> str:
    """The bootstrapped base image's tag, building it first when missing (needs root and debootstrap);
    ``devel``: the base with a C++ compiler and Python's headers, for images that compile a package."""
    import docker.errors

    mirror, suite = host_apt_source()
    tag = base_tag(suite, devel)
    packages = BASE_PACKAGES + (DEVEL_PACKAGES if devel else ())
    if not force:
        try:
            c.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
    if shutil.which("debootstrap") is None:
        raise UsageError("building the base image needs debootstrap (apt-get install debootstrap), "
                         "or pass --base IMAGE where a registry is reachable")
    if os.geteuid() != 0:
        raise UsageError("debootstrap needs root to build the base image; run `sudo being images build` once, "
                         "or pass --base IMAGE where a registry is reachable")
    work = cache_dir() / "bootstrap"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror]
        log.info("bootstrapping %s from %s (the host's apt source)", suite, mirror)
        with progress.task(f"debootstrap {suite}{' (devel)' if devel else ''}", unit="step") as task:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = []
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append(line.rstrip())
                if line.startswith("I: "):
                    task.note(line[3:60].strip())
                    task.advance()
            if proc.wait() != 0:
                raise BeingError(f"debootstrap {suite} from {mirror} failed; last lines:\n" + "\n".join(lines[-15:]))
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / cache).glob("*"):
                if p.is_file():
                    p.unlink()
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        shutil.rmtree(rootfs, ignore_errors=True)
        repo, _, version = tag.partition(":")
        c.api.import_image_from_file(str(archive), repository=repo, tag=version, changes=[
            "ENV LANG=C.UTF-8", 'CMD ["python3"]', f"LABEL being.base={suite}{'-devel' if devel else ''}"])
    log.info("imported %s", tag)
    return tag


def python_of(c, image: str) -> str:
    out = c.containers.run(image, ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           remove=True, network_disabled=True, entrypoint=[])
    return out.decode().strip()


# --- locks and wheels -------------------------------------------------------------------------------


def read_lock(path: Path, slug: str) -> list[str]:
    """The ``name==version`` pins of the lock file of the image ``slug``."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist; create it with `being images lock {slug}`")
    pins = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            if not re.fullmatch(r"[A-Za-z0-9._-]+===?[A-Za-z0-9.+!_-]+", line.strip()):
                raise UsageError(f"{path}:{n}: expected NAME==VERSION, got '{line.strip()}'")
            pins.append(line.strip())
    return pins


def read_sources(path: Path) -> list[tuple[str, dict[str, str]]]:
    """``(pin, environment)`` per line ``NAME==VERSION [VAR=VALUE ...]`` of a sources file; the variables are
    set while the host's pip reads the source distribution's metadata (e.g. to skip compiling it there)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        env = dict(w.split("=", 1) for w in words[1:] if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w))
        if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", words[0]) or len(env) != len(words) - 1:
            raise UsageError(f"{path}:{n}: expected NAME==VERSION [VAR=VALUE ...], got '{line.strip()}'")
        out.append((words[0], env))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_key(filename: str) -> tuple[str, str]:
    """(normalised name, version) of a wheel file name."""
    name, version = filename.split("-")[:2]
    return _norm(name), version


def write_lock(spec: ImageSpec, constraints: list[str] | tuple[str, ...] = ()) -> Path:
    """Resolve the core + plugin with the host's pip and write the pinned lock into the plugin's source."""
    dist_dirs = _local_sources()
    plugin_dir = dist_dirs.get(spec.impl.distribution)
    if plugin_dir is None:
        raise UsageError(f"{spec.impl.distribution} is not installed from a local folder, so its lock cannot be "
                         f"written; install it from its source (pip install -e FOLDER)")
    extras = importlib.metadata.metadata(spec.impl.distribution).get_all("Provides-Extra") or []
    folders = [str(dist_dirs["being-core"]) if "being-core" in dist_dirs else "being-core",
               f"{plugin_dir}[{spec.variant}]" if spec.variant in extras else str(plugin_dir)]
    for req in importlib.metadata.requires(spec.impl.distribution) or []:
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]
        if name != "being-core" and name in dist_dirs:  # a plugin this one builds on (hubert on wav2vec2)
            folders.append(str(dist_dirs[name]))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), *folders, *constraints]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BeingError(f"pip could not resolve {spec.slug}:\n{proc.stderr[-2000:]}")
        items = json.loads(report.read_text())["install"]
    pins = [f"{HEADLESS.get(i['metadata']['name'].lower(), i['metadata']['name'])}=={i['metadata']['version']}"
            for i in items]
    header = [f"# {spec.slug} ({spec.variant}): every package of its image, pinned. Regenerate with",
              f"#   being images lock {spec.slug}{'' if spec.variant == 'cpu' else ' --variant ' + spec.variant}",
              "# Being's own distributions are built from their installed source folder when they came from one,",
              "# else fetched by these pins like any other package.",
              "# OpenCV is swapped for its headless build (no X11/OpenGL libraries in the image)."]
    target = lock_target(spec.impl.cls.__module__.split(".")[0], spec.lock, plugin_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(f".{target.name}.tmp")
    tmp_path.write_text("\n".join([*header, *sorted(pins, key=str.lower)]) + "\n", encoding="utf-8")
    os.replace(tmp_path, target)
    return target


def lock_target(package: str, installed_lock: Path, source: Path) -> Path:
    """Where a lock goes in a plugin's source folder: where it is installed from, for an editable install;
    else ``<package>/image/`` in the source's flat or ``src/`` layout."""
    if installed_lock.resolve().is_relative_to(source.resolve()):
        return installed_lock
    for folder in (source / package, source / "src" / package):
        if (folder / "__init__.py").is_file():
            return folder / "image" / installed_lock.name
    raise UsageError(f"cannot find the package {package} in {source} (neither {package}/ nor src/{package}/) "
                     f"to write its lock into")


def _local_sources() -> dict[str, Path]:
    """Installed distributions that came from a local folder (editable or not), with that folder."""
    found = {}
    for d in importlib.metadata.distributions():
        text = d.read_text("direct_url.json")
        if not text:
            continue
        info = json.loads(text)
        if info.get("url", "").startswith("file://") and "dir_info" in info:
            found[d.metadata["Name"]] = Path(info["url"][len("file://"):])
    return found


@contextlib.contextmanager
def _staged(cache: Path, pattern: str) -> Iterator[Path]:
    """A temporary folder inside ``cache`` for pip to write into; what matches ``pattern`` is then renamed into
    ``cache``, so a build running at the same time (CI builds images in parallel) never sees a half-written file."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        yield Path(tmp)
        for path in Path(tmp).glob(pattern):
            os.replace(path, cache / path.name)


def fetch_wheels(pins: list[str], progress: Reporter) -> dict[str, Path]:
    """Wheels for ``pins`` in the shared cache, fetched with the host's pip settings when missing."""
    cache = cache_dir() / "wheels"
    cache.mkdir(parents=True, exist_ok=True)

    def index() -> dict[tuple[str, str], Path]:
        return {wheel_key(p.name): p for p in cache.glob("*.whl")}

    def want(pin: str) -> tuple[str, str]:
        name, version = pin.split("==")
        return _norm(name), version

    missing = [p for p in pins if want(p) not in index()]
    if missing:
        with _staged(cache, "*.whl") as tmp:
            req = tmp / "requirements.txt"
            # "===": exactly that version, never a local build of it ("2.13.0" must not take "2.13.0+cpu")
            req.write_text("\n".join(p if "+" in p else p.replace("==", "===", 1) for p in missing) + "\n")
            with progress.task(f"fetching {len(missing)} wheels (host pip settings)", total=None):
                proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                                       "--wheel-dir", str(tmp), "-r", str(req)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BeingError(f"pip could not fetch wheels for the image:\n{proc.stderr[-2000:]}")
    have = index()
    absent = [p for p in pins if want(p) not in have]
    if absent:
        raise BeingError(f"after fetching, no wheel matches {', '.join(absent)} in {cache}")
    return {p: have[want(p)] for p in pins}


def fetch_sources(sources: list[tuple[str, dict[str, str]]], progress: Reporter) -> dict[str, Path]:
    """Source distributions for ``sources`` in the shared cache, fetched with the host's pip settings when
    missing (pip reads their metadata in this environment, with each source's variables set)."""
    cache = cache_dir() / "sources"
    cache.mkdir(parents=True, exist_ok=True)

    def find(pin: str) -> Path | None:
        name, version = pin.split("==")
        return next((p for p in cache.glob("*.tar.gz") if _norm(p.name[:-7].rsplit("-", 1)[0]) == _norm(name)
                     and p.name[:-7].rsplit("-", 1)[1] == version), None)

    out = {}
    for pin, env in sources:
        if find(pin) is None:
            with _staged(cache, "*.tar.gz") as tmp, \
                    progress.task(f"fetching the source of {pin} (host pip settings)", total=None):
                proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                       "--no-build-isolation", "--quiet", "--dest", str(tmp), pin],
                                      capture_output=True, text=True, env={**os.environ, **env})
                if proc.returncode != 0:
                    raise BeingError(f"pip could not fetch the source distribution of {pin}:\n{proc.stderr[-2000:]}")
        found = find(pin)
        if found is None:
            raise BeingError(f"after fetching, no source distribution of {pin} (.tar.gz) is in {cache}")
        out[pin] = found
    return out


def build_local_wheel(folder: Path, dest: Path) -> Path:
    """A wheel of a source folder, built from a clean copy (no stale ``build/`` or ``*.egg-info`` leaks in)."""
    before = set(dest.glob("*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / folder.name
        skip = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".venv", ".git", "tests",
                                      "containers", "benchmarks", "docs", "runs", "plugins",
                                      "examples", "scripts", ".pack", ".whl")
        shutil.copytree(folder, src, ignore=skip)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                               str(dest), str(src)], capture_output=True, text=True)
    made = set(dest.glob("*.whl")) - before
    if proc.returncode != 0 or len(made) != 1:
        raise BeingError(f"could not build a wheel of {folder}:\n{proc.stderr[-2000:]}")
    return made.pop()


# --- build, list, prune -----------------------------------------------------------------------------


def current(c, spec: ImageSpec) -> bool:
    import docker.errors

    try:
        image = c.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    return stale_reason(image.labels or {}, spec) is None


def build(c, spec: ImageSpec, base: str, progress: Reporter, force: bool = False,
          devel_base: str | None = None) -> str:
    """Build ``spec``'s image unless a current one exists; returns its tag. ``devel_base``: the base of the
    stage that compiles the image's :attr:`ImageSpec.sources` (needed when it has any)."""
    if not force and current(c, spec):
        log.info("%s is current, not rebuilt", spec.tag)
        return spec.tag
    pins = read_lock(spec.lock, spec.slug)
    sources = spec.sources
    compiled = {pin for pin, _ in sources}
    if not compiled <= set(pins):
        raise UsageError(f"{spec.folder / f'sources-{spec.variant}.txt'}: {', '.join(sorted(compiled - set(pins)))} "
                         f"not pinned in {spec.lock}; the sources must be the lock's versions")
    if sources and devel_base is None:
        raise UsageError(f"{spec.tag} compiles {', '.join(sorted(compiled))} while it is built and needs a base "
                         f"with a compiler (devel_base)")
    local = _local_sources()
    from_source = {p: local[n] for p in pins if (n := _installed_name(p, local)) is not None}
    started = time.monotonic()
    wheels = fetch_wheels([p for p in pins if p not in from_source and p not in compiled] + spec.toolchain, progress)
    toolchain = set(spec.toolchain)
    sdists = fetch_sources(sources, progress)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        ctx = Path(tmp)
        shutil.copyfile(spec.dockerfile, ctx / "Dockerfile")
        dest, tools, src_dir, ours = (ctx / f"{part}-{spec.variant}" for part in ("wheels", "build", "sources", "being"))
        for folder in (dest, tools, src_dir, ours):
            folder.mkdir()
        for pin, src in wheels.items():
            _link_or_copy(src, (tools if pin in toolchain else dest) / src.name)
        for src in sdists.values():
            _link_or_copy(src, src_dir / src.name)
        for folder in dest, tools, src_dir, ours:  # an empty folder still makes the Dockerfile's COPY of it work
            (folder / ".keep").touch()
        for folder in from_source.values():
            build_local_wheel(folder, ours)
        check = ctx / f"check-{spec.variant}.py"
        if spec.check is not None:
            shutil.copyfile(spec.check, check)
        else:
            check.write_text("")
        labels = spec.labels()
        lines: list[str] = []
        replaced = _image_id(c, spec.tag)
        steps: set[str] = set()  # its steps' images: a multi-stage build leaves its first stages' untagged
        buildargs = {"BASE": base, "DEVEL_BASE": devel_base or base, "VARIANT": spec.variant}
        with progress.task(f"building {spec.tag}", unit="step") as task:
            try:
                for chunk in c.api.build(path=str(ctx), tag=spec.tag, buildargs=buildargs,
                                         labels=labels, rm=True, forcerm=True, network_mode="none", decode=True):
                    if "error" in chunk:
                        raise BeingError(f"building {spec.tag} failed: {chunk['error'].strip()}\n"
                                         + "\n".join(lines[-15:]))
                    text = (chunk.get("stream") or "").rstrip()
                    made = _step_image(text)
                    if made:
                        steps.add(made)
                    if text:
                        lines.append(text)
                        log.debug("%s", text)
                        if text.startswith("Step "):
                            task.note(text[:70])
                            task.advance()
            except BeingError:
                raise
            except Exception as exc:  # docker.errors.APIError and friends
                raise BeingError(f"building {spec.tag} failed: {_short(exc)}") from None
    log.info("built %s in %.0f s", spec.tag, time.monotonic() - started)
    if replaced is not None:  # untagged now, unless the build made the same image or it has another tag
        steps.add(replaced.split(":")[-1][:12])
    _remove_untagged(c, steps)
    return spec.tag


def _step_image(line: str) -> str | None:
    """The image id a build step's output line ``' ---> 1b637f4d24d7'`` names, else None."""
    m = re.fullmatch(r"\s*---> ([0-9a-f]{12})", line)
    return m.group(1) if m else None


def _remove_untagged(c, ids: set[str]) -> None:
    """Remove the untagged images among ``ids`` (12-digit ids): the image a rebuild took its tag from, and those a
    multi-stage build's earlier stages leave (a CUDA image's compiler stage: 8 GB), so that rebuilding does not
    pile up gigabytes. An image with another tag is not untagged; one a container uses is kept."""
    for image in c.images.list(filters={"dangling": True}):
        if image.id.split(":")[-1][:12] in ids:
            try:
                c.images.remove(image.id, force=False)
                log.info("removed the untagged image %s", image.short_id)
            except Exception as exc:  # docker.errors.APIError: in use
                log.warning("kept the untagged image %s: %s", image.short_id, _short(exc))


def _image_id(c, tag: str) -> str | None:
    import docker.errors

    try:
        return c.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def _installed_name(pin: str, local: dict[str, Path]) -> str | None:
    """The distribution of ``pin`` when it is installed here from a source folder at the pinned version."""
    name, _, version = pin.partition("==")
    for dist, _folder in local.items():
        if _norm(dist) == _norm(name):
            installed = importlib.metadata.version(dist)
            if installed != version.lstrip("="):
                raise UsageError(f"{name} {installed} is installed from source, but the lock pins {version}; "
                                 f"run `being images lock` for this image")
            return dist
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def listing(c, registry: Registry) -> list[dict[str, Any]]:
    """Every image Being built: tag, size, age, and whether it matches the installed plugin."""
    by_slug = {i.cls.slug(): i for i in registry.all()}
    rows = []
    for image in c.images.list(filters={"label": LABEL}):
        labels = image.labels or {}
        impl = by_slug.get(labels.get(LABEL, ""))
        if not image.tags:
            status = "untagged: replaced by a newer build"
        elif impl is None:
            status = "plugin not installed"
        else:
            reason = stale_reason(labels, ImageSpec(impl, labels.get("being.variant", "cpu")))
            status = "current" if reason is None else f"stale: {reason}"
        created = image.attrs.get("Created", "")
        for tag in image.tags or ["<none>"]:
            rows.append({"tag": tag, "id": image.short_id, "size_mb": round(image.attrs.get("Size", 0) / 1e6),
                         "created": created[:19].replace("T", " "), "age": _age(created), "status": status})
    return sorted(rows, key=lambda r: r["tag"])


def _age(created: str) -> str:
    try:
        from datetime import datetime

        then = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
        secs = (datetime.now(UTC) - then).total_seconds()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def prune(c, registry: Registry, everything: bool = False) -> list[str]:
    """Remove Being images that are stale or whose plugin is gone (all of them with ``everything``)."""
    removed = []
    for row in listing(c, registry):
        if everything or row["status"] != "current":
            target = row["tag"] if row["tag"] != "<none>" else row["id"]
            try:
                c.images.remove(target, force=False)
                removed.append(target)
            except Exception as exc:  # an image still used by a container is kept
                log.warning("kept %s: %s", target, _short(exc))
    c.images.prune(filters={"dangling": True, "label": LABEL})  # only Being's: other dangling images are not ours
    return removed


def read_constraints(spec: ImageSpec, out: Path) -> list[str]:
    """pip arguments that pin a lock to this environment's versions wherever they overlap (so a stage gives
    the same numbers in its image as in-process), plus ``containers/constraints-<variant>.txt``."""
    local = _local_sources()
    pins = []
    for d in importlib.metadata.distributions():
        name = d.metadata["Name"]
        if name and name not in local and not (spec.variant != "cpu" and name.lower() == "torch"):
            pins.append(f"{name}=={d.version}")
    out.write_text("\n".join(sorted(set(pins))) + "\n", encoding="utf-8")
    args = ["-c", str(out)]
    path = package_files("being_docker") / f"constraints-{spec.variant}.txt"
    return args + (["-c", str(path)] if path.is_file() else [])


def check_python(c, base: str) -> None:
    """The wheels come from this host, so the base image must have the same Python minor version."""
    found, host = python_of(c, base), "{}.{}".format(*sys.version_info[:2])
    if found != host:
        raise UsageError(f"base image {base} has Python {found}, but the wheels are gathered by this "
                         f"host's Python {host}; run `being images build` with Python {found} or "
                         f"pass --base with a Python {host} image")
