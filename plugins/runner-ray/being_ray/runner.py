"""``runner: ray``: one stage request, one Ray task, with the resources the stage declares."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from being_core import Implementation, Runner, RunnerOptions
from being_core.errors import StageFailed, UnknownImplementationError, UsageError
from being_core.progress import Reporter, Task, replay
from being_core.protocol import StageRequest
from being_core.runners import timed_out

from .bundle import inputs_of, pack, unpack

log = logging.getLogger("being.ray")

#: Ray's own errors that mean the task's worker or node went away (Ray retries those ``retries`` times).
_LOST = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "ActorDiedError",
         "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
         "TaskUnschedulableError", "RaySystemError", "LocalRayletDiedError")


class RayOptions(RunnerOptions):
    address: str | None = Field(
        None, description="The Ray cluster, when this process has not joined one yet: 'auto' (the cluster started "
        "on this machine with `ray start`), 'local' (a new Ray instance of this machine), host:port or "
        "ray://host:10001; null: $RAY_ADDRESS, else 'local'.")
    storage: Literal["auto", "shared", "shipped"] = Field(
        "auto", description="'shared': every node sees the run folder at the same path; 'shipped': the inputs "
        "travel with the task and the outputs come back; 'auto': shared where the node sees it, else shipped.")
    cpus: float | None = Field(None, ge=0, le=1024, description="CPUs per task (default: what the stage declares).")
    gpus: float | None = Field(None, ge=0, le=64, description="GPUs per task (default: what the stage declares; "
                               "a GPU the stage can do without is dropped on a cluster that has none).")
    memory_gb: float | None = Field(None, gt=0, le=4096, description="Memory Ray reserves for the task.")
    resources: dict[str, Annotated[float, Field(gt=0, le=1_000_000)]] = Field(
        default_factory=dict, description="Custom Ray resources the task needs, e.g. {\"A100\": 1} for nodes "
        "started with `ray start --resources '{\"A100\": 8}'`.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of the task. Ray sets OMP_NUM_THREADS to the "
        "task's CPUs; BLAS sums round differently with other thread counts, so for the bits of an in-process run "
        "give the task the same (e.g. {OMP_NUM_THREADS: '8'}).")
    retries: int = Field(3, ge=0, le=100, description="Times a task lost with its worker or node is run again; "
                         "with shared storage the stage resumes from its saved state (checkpoints).")
    inner: str = Field("inprocess", description="How the stage runs on the node: a runner installed there "
                       "(inprocess, subprocess, docker).")
    inner_options: dict[str, Any] = Field(default_factory=dict, description="The inner runner's options.")


class RayRunner(Runner[RayOptions]):
    """Runs the stage as a Ray task on a node of a Ray cluster that has its resources (GPU for the trainer)."""

    name = "ray"
    Options = RayOptions

    def check(self, impl: Implementation, options: RayOptions) -> None:
        from being_core.plugins import load_registry

        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("runner 'ray' needs Ray: pip install 'ray>=2.40'") from None
        if options.inner == self.name:
            raise UsageError(f"{impl.cls.kind} '{impl.cls.name}': runner_options.inner cannot be 'ray' itself")
        try:
            inner = load_registry().runner(options.inner)
        except UnknownImplementationError as exc:
            raise UsageError(f"{impl.cls.kind} '{impl.cls.name}': runner_options.inner: {exc}") from None
        try:
            inner.cls.Options.model_validate(options.inner_options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"{impl.cls.kind} '{impl.cls.name}': runner_options.inner_options.{where}: "
                             f"{first['msg']} (options of runner '{options.inner}')") from None

    def launch(self, impl: Implementation, request: Path, root: Path, options: RayOptions,
               progress: Reporter) -> None:
        cls = impl.cls
        data = request.read_bytes()
        req = StageRequest.model_validate_json(data)
        request_rel = request.resolve().relative_to(root.resolve()).as_posix()
        what = req.stage if req.action == "run" else f"{req.stage}:{req.action}"
        connect(options.address)
        resources = _resources(cls, cls.Config.model_validate(req.config), options)
        job = {"kind": str(cls.kind), "impl": cls.name, "root": str(root.resolve()), "request": request_rel,
               "request_sha256": hashlib.sha256(data).hexdigest(), "work_dir": req.work_dir,
               "storage": options.storage, "inner": options.inner, "inner_options": options.inner_options,
               "launch_id": uuid.uuid4().hex}
        bundle = None
        if options.storage == "shipped":
            bundle = pack(root, inputs_of(req, root, request_rel))
        out = self._run(job, bundle, resources, options, impl, progress, root)
        if not out["visible"]:
            log.info("%s '%s': Ray node %s does not see %s; shipping the inputs with the task", what, cls.name,
                     out["node"], root)
            job["storage"], bundle = "shipped", pack(root, inputs_of(req, root, request_rel))
            out = self._run(job, bundle, resources, options, impl, progress, root)
        for level, name, message in out.get("log", []):  # the stage's own lines, into this run's log
            logging.getLogger(name).log(level, "%s", message)
        entered, began, ended = out["times"]
        timing = (f"the task began {entered - out['submitted']:.1f} s after it was submitted, the stage "
                  f"{began - entered:.1f} s later, and ran {ended - began:.1f} s")
        if bundle is None:
            log.info("%s '%s': ran as a Ray task on node %s, run folder shared (%s)", what, cls.name, out["node"],
                     timing)
            return
        work = root / req.work_dir
        for sub in ("out", "state"):
            shutil.rmtree(work / sub, ignore_errors=True)
        unpack(out["bundle"], root, under=req.work_dir)
        log.info("%s '%s': ran as a Ray task on node %s, run folder shipped (%.1f MB in, %.1f MB back; %s)", what,
                 cls.name, out["node"], len(bundle) / 1e6, len(out["bundle"]) / 1e6, timing)

    def _run(self, job: dict[str, Any], bundle: bytes | None, resources: dict[str, Any], options: RayOptions,
             impl: Implementation, progress: Reporter, root: Path) -> dict[str, Any]:
        import ray

        from .node import run_job

        cls = impl.cls
        hub = _hub()
        extra = {"runtime_env": {"env_vars": dict(options.env)}} if options.env else {}
        remote = task_function(run_job, resources).options(**resources, **extra, max_retries=options.retries,
                                                           retry_exceptions=False, name=f"being {cls.kind} {cls.name}")
        submitted = time.time()  # node clocks are compared with it: the log's timings assume synchronised clocks
        ref = remote.remote(job, ray.put(bundle) if bundle is not None else None, hub)
        tasks: dict[int, Task] = {}
        started = time.monotonic()
        try:
            while True:
                done, _ = ray.wait([ref], timeout=0.3)
                try:
                    lines = ray.get(hub.take.remote(job["launch_id"]))
                except ray.exceptions.RayError:  # the hub went with a lost node: progress lines only are lost
                    with _connect_lock:
                        _hub_handle.clear()
                    hub, lines = _hub(), []
                for line in lines:
                    replay(line, progress, tasks)
                if done:
                    break
                if options.timeout_s and time.monotonic() - started > options.timeout_s:
                    ray.cancel(ref, force=True)
                    raise timed_out(cls, "on Ray", options.timeout_s, " and was cancelled",
                                    root / job["work_dir"] / "stage.log")
            out: dict[str, Any] = ray.get(ref)
            return {**out, "submitted": submitted}
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, StageFailed):
                raise StageFailed(str(cause)) from None
            raise StageFailed(f"{cls.kind} '{cls.name}' failed on its Ray node: {type(cause).__name__}: "
                              f"{cause}") from None
        except ray.exceptions.RayError as exc:
            if type(exc).__name__ in _LOST:
                raise StageFailed(f"{cls.kind} '{cls.name}': its Ray task was lost {options.retries + 1} times "
                                  f"(runner_options.retries: {options.retries}): {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            raise StageFailed(f"{cls.kind} '{cls.name}' on Ray: {type(exc).__name__}: {exc}") from None
        finally:
            for task in tasks.values():
                task.close()


def task_function(fn: Any, resources: dict[str, Any]) -> Any:
    """``fn`` as a Ray remote function for a task of these resources. A task given GPUs gets a worker process of
    its own (``max_calls=1``, Ray's own default for functions declared with GPUs, which ``.options()`` does not
    apply): Ray reuses idle workers and sets ``CUDA_VISIBLE_DEVICES`` anew for each task, but a process that has
    initialised CUDA keeps the cards it saw first, so a reused worker would train on another task's GPU."""
    import ray

    return ray.remote(max_calls=1 if resources.get("num_gpus") else 0)(fn)


_connect_lock = threading.Lock()
_hub_handle: dict[str, Any] = {}


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` unless this process already has (see ``RayOptions.address``)."""
    import os

    import ray

    with _connect_lock:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            # "local" goes to Ray as such: given None, Ray would join a cluster that `ray start` left running here
            # (or RAY_ADDRESS) instead of starting an instance of its own
            ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        except ConnectionError as exc:
            raise UsageError(f"cannot reach a Ray cluster at {address!r}: {str(exc).splitlines()[0]}; start one "
                             f"with `ray start --head`, or use 'local' for a Ray instance of this machine") from None
        total = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("ray: %s (%d node%s, %g CPUs, %g GPUs)", "started a local Ray instance" if address == "local"
                 else f"joined the cluster at {address}", len(nodes), "" if len(nodes) == 1 else "s",
                 total.get("CPU", 0), total.get("GPU", 0))


def _hub() -> Any:
    """The progress hub of this driver's Ray session (a zero-CPU actor, created once)."""
    import ray

    from .node import ProgressHub

    session = ray.get_runtime_context().get_job_id()
    with _connect_lock:
        if session not in _hub_handle:
            _hub_handle.clear()
            here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True)  # on the driver's node, not a worker's
            _hub_handle[session] = ray.remote(ProgressHub).options(num_cpus=0, scheduling_strategy=here).remote()
        return _hub_handle[session]


def _resources(cls: Any, config: Any, options: RayOptions) -> dict[str, Any]:
    """Ray task options from what the stage declares, ``runner_options`` overriding; a GPU the stage can do
    without is dropped, and CPUs are capped, where no live node could ever offer them."""
    import ray

    declared = cls.resources(config)
    cpus = declared.cpus if options.cpus is None else options.cpus
    gpus = declared.gpus if options.gpus is None else options.gpus
    memory = declared.memory_gb if options.memory_gb is None else options.memory_gb
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def offers(node: dict[str, float], gpus: float) -> bool:
        return node.get("GPU", 0) >= gpus and all(node.get(k, 0) >= v for k, v in options.resources.items())

    def wanted(gpus: float) -> str:
        return ", ".join([f"{gpus:g} GPU(s)"] * bool(gpus) + [f"Ray resource {k!r} x {v:g}"
                                                               for k, v in options.resources.items()])

    if gpus and not any(offers(n, gpus) for n in nodes):
        if declared.gpu_required or options.gpus:
            raise StageFailed(f"{cls.kind} '{cls.name}' needs {wanted(gpus)} on one node, and no live node of the "
                              f"Ray cluster has that; add such a node, or set runner_options.gpus: 0 where the "
                              f"stage can run on the CPU")
        log.info("%s '%s': no node of the Ray cluster has a GPU for it; it runs on the CPU", cls.kind, cls.name)
        gpus = 0
    if not any(offers(n, gpus) for n in nodes):
        raise StageFailed(f"{cls.kind} '{cls.name}' needs {wanted(gpus)} on one node (runner_options.resources), "
                          f"and no live node of the Ray cluster has that")
    most = max(n.get("CPU", 0) for n in nodes if offers(n, gpus))
    if cpus > most:
        log.info("%s '%s': asks for %g CPUs, the largest node that fits has %g; it gets those", cls.kind, cls.name,
                 cpus, most)
        cpus = most
    resources: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if options.resources:
        resources["resources"] = dict(options.resources)
    if memory:
        resources["memory"] = int(memory * 1024**3)
    return resources


