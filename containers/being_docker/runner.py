"""The docker runner: one stage request in its implementation's own image, through the docker SDK.

Inside the container the run folder is mounted read-only at ``/being/run``; only the stage's work folder
(``.being/stages/<name>/work``: its ``out/``, ``state/`` and ``result.json``) is mounted writable over it.
The container runs as the calling user, without a network, with a read-only root filesystem and a
private ``/tmp``; it is removed however the stage ends (success, failure, timeout or Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from being_core.errors import StageFailed, UsageError
from being_core.execute import read_request
from being_core.progress import Reporter, replay
from being_core.registry import Implementation
from being_core.runners import Runner, RunnerOptions, check_exit, timed_out
from being_core.stage import Stage

from . import images

log = logging.getLogger("being.runner")
container_log = logging.getLogger("being.container")

MOUNT = "/being/run"


class DockerOptions(RunnerOptions):
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU limit of the container.")
    memory: str | None = Field(None, description="Memory limit of the container, e.g. '8g'.")
    gpu: bool | None = Field(None, description="Request a GPU; default: what the implementation declares.")
    variant: Literal["cpu", "cuda"] = Field("cpu", description="Which of the implementation's images: 'cuda' runs "
                                            "<image>-cuda (`being images build IMPL --variant cuda`).")
    image: str | None = Field(None, description="Image to run instead of the implementation's own tag (not "
                              "checked against the installed plugin).")
    pids: int = Field(4096, ge=16, le=1_000_000, description="Most processes and threads the container may run.")
    cache: bool = Field(True, description="Mount a writable cache folder per image (~/.cache/being/containers/"
                        "<image>) at /cache, where e.g. numba keeps compiled kernels between runs.")


def image_for(stage: type[Stage[Any]], options: DockerOptions) -> str:
    own = stage.image() if options.variant == "cpu" else f"{stage.image()}-{options.variant}"
    return options.image or own


def _build_args(stage: type[Stage[Any]], options: DockerOptions) -> str:
    return stage.slug() + ("" if options.variant == "cpu" else f" --variant {options.variant}")


class DockerRunner(Runner[DockerOptions]):
    """Runs the stage in its implementation's image: no network, read-only run folder, as you."""

    name = "docker"
    Options = DockerOptions

    def check(self, impl: Implementation, options: DockerOptions) -> None:
        import docker.errors

        stage = impl.cls
        c = images.client()
        tag = image_for(stage, options)
        try:
            image = c.images.get(tag)
        except docker.errors.ImageNotFound:
            raise UsageError(f"{stage.kind} '{stage.name}' runs in Docker, but the image {tag} is not built; "
                             f"run `being images build {_build_args(stage, options)}`") from None
        if options.image is None:
            spec = images.ImageSpec(impl, options.variant)
            reason = images.stale_reason(image.labels or {}, spec)
            if reason:
                raise UsageError(f"image {tag} does not match the installed {stage.kind} '{stage.name}' ({reason}); "
                                 f"run `being images build {_build_args(stage, options)}`")

    def launch(self, impl: Implementation, request: Path, root: Path, options: DockerOptions,
               progress: Reporter) -> None:
        import docker.errors
        import requests
        from docker.types import Mount

        stage = impl.cls
        c = images.client()
        tag = image_for(stage, options)
        root = Path(root).resolve()
        _remove_leftovers(c, root, str(stage.kind))
        work = request.parent / "work"
        rel_request = request.resolve().relative_to(root).as_posix()
        rel_work = work.resolve().relative_to(root).as_posix()
        mounts = [Mount(MOUNT, str(root), type="bind", read_only=True),
                  Mount(f"{MOUNT}/{rel_work}", str(work.resolve()), type="bind", read_only=False)]
        req = read_request(request)
        mounts += [Mount(str(p), str(p), type="bind", read_only=True) for p in _host_paths(req.config, root)]
        env = container_env()
        if options.cache:  # kept between runs: numba's compiled kernels cost librosa ~30 s on every fresh start
            cache = images.cache_dir() / "containers" / re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
            cache.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount("/cache", str(cache), type="bind", read_only=False))
            # /tmp is noexec: code compiled at run time (torch extensions such as gsplat's) lives in /cache
            env.update(NUMBA_CACHE_DIR="/cache/numba", XDG_CACHE_HOME="/cache",
                       TORCH_EXTENSIONS_DIR="/cache/torch_extensions")
        kwargs = limits(stage, options, stage.Config.model_validate(req.config))
        log_path = work / "stage.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = c.containers.create(
                tag, [f"{MOUNT}/{rel_request}", "--root", MOUNT, "--progress", "jsonl"], mounts=mounts,
                user=f"{os.getuid()}:{os.getgid()}", network_disabled=True, read_only=True,
                tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=4g"}, working_dir="/tmp", detach=True,
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=options.pids,
                environment=env,
                labels={"being.stage": str(stage.kind), "being.run": str(root)}, **kwargs)
        except docker.errors.APIError as exc:
            raise StageFailed(f"{stage.kind} '{stage.name}': Docker could not create a container of {tag}: "
                              f"{exc.explanation or exc}") from None
        stopped = False
        tasks: dict = {}
        kind = str(stage.kind)
        with open(log_path, "w", encoding="utf-8") as log_file:
            readers = [threading.Thread(target=_pump, args=(container, True, progress, tasks, log_file, kind), daemon=True),
                       threading.Thread(target=_pump, args=(container, False, progress, tasks, log_file, kind), daemon=True)]
            try:
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    gpu_hint = ("; a GPU stage needs the NVIDIA container toolkit on the host, or "
                                "runner_options.gpu: false" if "device_requests" in kwargs else "")
                    raise StageFailed(f"{stage.kind} '{stage.name}': Docker could not start {tag}: "
                                      f"{exc.explanation or exc}{gpu_hint}") from None
                for t in readers:
                    t.start()
                try:
                    code = container.wait(timeout=options.timeout_s or None)["StatusCode"]
                except requests.exceptions.RequestException:  # the wait outlived timeout_s
                    if not options.timeout_s:
                        raise
                    stopped = True
                    container.kill()
                    code = None
                for t in readers:
                    t.join(timeout=10)
                container.reload()
            except KeyboardInterrupt:
                _remove(container)
                raise
            finally:
                for task in tasks.values():
                    task.close()
                _remove(container)
        if stopped:
            assert options.timeout_s is not None  # only a timeout stops a container
            raise timed_out(stage, f"in image {tag}", options.timeout_s, "; the container was removed", log_path)
        oom = (container.attrs.get("State") or {}).get("OOMKilled")
        check_exit(stage, f"in image {tag}", code, log_path,
                   " (out of memory: raise runner_options.memory)" if oom else "")


# The host's choices of BLAS kernels and thread counts: the container runs on the same CPU, and OpenBLAS,
# left to detect it again there, may pick other kernels whose float sums round differently (an AMD host
# with OPENBLAS_CORETYPE=Haswell gets 'Cooperlake' in a container), so the same stage would not write the
# same bits in a container as in-process.
NUMERIC_ENV_PREFIXES = ("OPENBLAS_", "GOTO_", "OMP_", "MKL_")


def container_env(host: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's environment: offline model libraries, caches in /tmp, unbuffered output, and the
    host's BLAS and thread settings (``NUMERIC_ENV_PREFIXES``)."""
    source: Mapping[str, str] = os.environ if host is None else host
    env = {k: v for k, v in source.items() if k.startswith(NUMERIC_ENV_PREFIXES)}
    env.update({"HOME": "/tmp", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLCONFIGDIR": "/tmp/mpl",
                "NUMBA_CACHE_DIR": "/tmp/numba", "PYTHONUNBUFFERED": "1"})
    return env


def limits(stage: type[Stage[Any]], options: DockerOptions, config: Any = None) -> dict[str, Any]:
    """Container resources: CPU and memory limits from the config; a GPU only for a stage that needs one
    (what it declares for its ``config``: ``resources(config).gpus``, e.g. none for a trainer told to use the
    CPU; ``needs_gpu`` without a config), unless ``runner_options.gpu`` says otherwise."""
    from docker.types import DeviceRequest

    kwargs: dict = {}
    if options.cpus:
        kwargs["nano_cpus"] = int(options.cpus * 1e9)
    if options.memory:
        kwargs["mem_limit"] = options.memory
    wants = stage.needs_gpu if config is None else stage.resources(config).gpus > 0
    if wants if options.gpu is None else options.gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return kwargs


_lock = threading.Lock()


def _pump(container, stdout: bool, progress: Reporter, tasks: dict, log_file, kind: str) -> None:
    """Copy one of the container's streams: progress events to ``progress``, everything else to the log."""
    buf = b""
    for chunk in container.logs(stdout=stdout, stderr=not stdout, stream=True, follow=True):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            _line(raw.decode("utf-8", "replace") + "\n", stdout, progress, tasks, log_file, kind)
    if buf:
        _line(buf.decode("utf-8", "replace"), stdout, progress, tasks, log_file, kind)


def _line(line: str, stdout: bool, progress: Reporter, tasks: dict, log_file, kind: str) -> None:
    with _lock:
        if stdout and replay(line, progress, tasks):
            return
        log_file.write(line)
        log_file.flush()
        if line.strip():  # into the run log (RUN/.being/log.txt); the console leaves these out
            container_log.info("%s: %s", kind, line.rstrip())


def _remove_leftovers(c, root: Path, kind: str) -> None:
    """Remove this stage's containers for this run folder that an earlier, killed being process left running:
    the run folder is locked by the process calling this, so no living process owns them."""
    for container in c.containers.list(all=True, filters={"label": [f"being.run={root}", f"being.stage={kind}"]}):
        log.warning("%s: removing container %s, left running by an earlier attempt that was killed",
                    kind, container.short_id)
        _remove(container)


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:  # already gone
        pass


def _host_paths(config: Mapping[str, Any], root: Path) -> list[Path]:
    """Absolute paths outside the run folder that the stage's config names (models, executables, caches)."""
    found = []
    for value in config.values():
        if isinstance(value, str) and value.startswith("/"):
            p = Path(value)
            if p.exists() and not p.resolve().is_relative_to(root):
                found.append(p.resolve())
    return sorted(set(found))
