"""Runs: ingest, then each selected stage in order, cached by inputs, implementation, version and config.

A stage writes into ``.being/stages/<kind>/work/out``; only after its ``result.json`` says it succeeded
and its files match what it declared are they moved into the run folder and recorded in ``being.json``.
Before anything is written, :meth:`Pipeline.preflight` checks every selected stage's runner and the
promises of the whole chain (:mod:`being_core.contracts`), and reports every problem at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import ResolvedConfig, ResolvedStage, StageSelection, crop_problems, dump_yaml
from .contracts import Provided, check_chain, provided_by_run, unmet
from .errors import ConfigError, InputError, StageFailed, UsageError
from .ingest import (
    AUDIO_FILE,
    SAMPLES_DIR,
    Crop,
    MediaInfo,
    center_square,
    check_run_folder,
    check_streams,
    extract_audio,
    face_square,
    ingest,
    probe,
    sample_frames,
)
from .live import made_with_installed
from .manifest import INTERNAL_DIR, Manifest, match_patterns, matches_any, sha256_file, sha256_json
from .plugins import load_registry
from .progress import Reporter
from .protocol import StageRequest, StageResult, write_bytes_atomic, write_json_atomic, write_text_atomic
from .registry import Registry
from .stage import (
    PREPARE_STAGES,
    REFINED_METRICS,
    REFINED_VAL,
    STAGE_ORDER,
    DatasetFacts,
    FaceBoxes,
    RefineParams,
    RenderParams,
    ScoreParams,
    Stage,
    StageKind,
    alpha_path,
    split_point,
)

log = logging.getLogger("being.pipeline")
CONFIG_NAME = "config.yaml"
RUN_LOG = f"{INTERNAL_DIR}/log.txt"
_CROP_HINT = {"center": "ingest.crop: face follows the subject instead",
              "face": "a larger ingest.face_scale keeps more around the face"}


class Pipeline:
    """One run folder driven by one resolved config."""

    def __init__(self, root: Path, config: ResolvedConfig, registry: Registry | None = None,
                 progress: Reporter | None = None, force: set[str] | frozenset[str] = frozenset()):
        self.root = Path(root).resolve()
        self.config = config
        self.registry = registry or load_registry()
        self.progress = progress or Reporter()
        self.force = set(force)
        unknown = self.force - {"ingest", "all", *map(str, StageKind)}
        if unknown:
            raise UsageError(f"--force got unknown stage(s): {', '.join(sorted(unknown))}; "
                             f"use ingest, {', '.join(map(str, StageKind))} or all")
        self._manifest: Manifest | None = None
        self._checked: set[StageKind] = set()  # stages whose runner said it can run them
        #: What this pipeline object ran (``ingest``, ``face_tracker``, ``trainer:render``...), cached steps not
        #: included: empty after a command that found everything done.
        self.ran: list[str] = []

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("the run folder is not open")
        return self._manifest

    # --- public entry points --------------------------------------------------------------------

    def prepare(self, video: Path, train: bool = False) -> Manifest:
        """Ingest ``video`` and run every selected dataset stage (face, audio, AU, teeth); with ``train``
        also the trainer and refiner. Everything is checked before the first file is written."""
        video = Path(video)
        kinds = STAGE_ORDER if train else PREPARE_STAGES
        info = probe(video)
        check_streams(video, info, self.config.raw.ingest)
        if problems := crop_problems(self.config):
            raise ConfigError(self.config.source, problems)
        self.preflight(kinds, has_audio=info.audio_codec is not None)
        check_run_folder(video, self.root)
        with self._open():
            self._save_config()
            crop = self.ingest(video, info)
            for kind in PREPARE_STAGES:
                try:
                    self.run_stage(kind)
                except StageFailed as exc:
                    if kind == StageKind.FACE_TRACKER and crop is not None and not crop.whole_frame:
                        raise StageFailed(f"{exc} (ingest kept {crop.describe()} of {video}; "
                                          f"{_CROP_HINT[crop.mode]})") from None
                    raise
            if train:
                self._train()
        return self.manifest

    def train(self) -> Manifest:
        """Run the trainer (and refiner, when selected) on a prepared run folder."""
        manifest = self._require_prepared()
        if StageKind.TRAINER not in self.config.stages:
            raise InputError(f"{self.config.source} selects no trainer (stages.trainer)")
        self.preflight((StageKind.TRAINER, StageKind.REFINER), provided=provided_by_run(manifest.stages,
                                                                                         self.registry))
        with self._open():
            self._save_config()
            self._train()
        return self.manifest

    def render(self, audio: Path, output: Path, pose: str | Path = "train", blink: str = "track") -> Path:
        """Make the trained avatar say ``audio``; writes ``output`` (.mp4) and returns its path. ``pose`` and
        ``blink`` are :class:`RenderParams`' (a pose file is copied into the render's folder first).

        The audio is encoded by the encoder recorded in this run (same implementation and config), in a
        sub-run folder ``renders/<audio>-<hash>/`` that keeps its own manifest and cache; then the trainer's
        ``render`` action turns the features into the video. With a refiner selected, the trainer also writes its
        frames losslessly and the refiner's ``refine`` action makes the video from them (``refined.mp4``); a
        refiner not fitted yet for this avatar is fitted first (:meth:`fit_refiner`, cached).
        """
        audio, output = Path(audio), Path(output)
        if output.suffix.lower() != ".mp4":
            raise InputError(f"render output {output} must end in .mp4")
        if output.is_dir():
            raise InputError(f"render output {output} is a folder; name the .mp4 file to write")
        poses = None if str(pose) in ("train", "still") else Path(pose)
        if poses is not None and (poses.suffix.lower() != ".npy" or not poses.is_file()):
            raise InputError(f"--pose {poses}: give 'train', 'still' or an existing .npy file of [T, 6] poses")
        if blink not in ("track", "natural", "none"):
            raise InputError(f"--blink {blink}: give 'track', 'natural' or 'none'")
        self.preflight((StageKind.AUDIO_ENCODER, StageKind.TRAINER, StageKind.REFINER), contracts=False)
        manifest = self._require_prepared()
        trainer = self.config.stages.get(StageKind.TRAINER)
        if trainer is None:
            raise InputError(f"{self.config.source} selects no trainer (stages.trainer) to render with")
        if (manifest.stages.get(str(StageKind.TRAINER)) or {}).get("status") != "done":
            raise InputError(f"{self.root} has no trained avatar; run `being train {self.root}` first")
        enc = manifest.stages.get(str(StageKind.AUDIO_ENCODER)) or {}
        if enc.get("status") != "done":
            raise InputError(f"{self.root} has no audio features, so its encoder is unknown; prepare it with audio")
        trained = manifest.stages[str(StageKind.TRAINER)]
        encoder = self.registry.implementation(StageKind.AUDIO_ENCODER, enc["impl"]).cls
        made_with_installed(self.root, [(encoder, enc)] + ([(trainer.impl.cls, trained)]
                                                           if trained.get("impl") == trainer.impl.cls.name else []))
        provided = provided_by_run(manifest.stages, self.registry)
        problem = unmet(trainer.impl.cls, provided, self.registry, "render")
        if problem:
            raise ConfigError(self.config.source, [problem])
        refiner = self.config.stages.get(StageKind.REFINER)
        if refiner is not None:  # the refiner's promises hold after this trainer (trainer:frames)
            self.preflight((StageKind.TRAINER, StageKind.REFINER), provided=provided)
        info = probe(audio, "audio")
        if info.audio_codec is None:
            raise InputError(f"{audio} has no audio stream")
        with self._open():
            sha = sha256_file(audio)
            sub_rel = f"renders/{_safe_stem(audio.stem)}-{sha[:8]}"
            sub = self._encoder_run(self.root / sub_rel, enc)
            sub.root.mkdir(parents=True, exist_ok=True)
            seconds = extract_audio(audio, sub.root, self.progress)
            facts = self.facts()
            n_frames = max(1, round(seconds * facts.fps))
            with sub._open(run_log=False):
                sub.manifest.data["dataset"] = DatasetFacts(
                    n_frames=n_frames, fps=facts.fps, width=facts.width, height=facts.height, has_audio=True,
                    audio_seconds=seconds, val_start=n_frames).model_dump(mode="json")
                sub.manifest.data["source"] = {"audio": str(audio.resolve()), "sha256": sha}
                entry = sub.run_stage(StageKind.AUDIO_ENCODER)
            assert entry is not None
            pose_param = str(pose)
            if poses is not None:  # the stage reads only the run folder: the poses travel into the render's folder
                pose_param = f"{sub_rel}/poses.npy"
                write_bytes_atomic(self.root / pose_param, poses.read_bytes())
            if refiner is not None:
                self.fit_refiner()
            params = RenderParams(audio=f"{sub_rel}/{AUDIO_FILE}", features=f"{sub_rel}/{entry['info']['file']}",
                                  n_frames=n_frames, output=f"{sub_rel}/render.mp4", pose=pose_param,
                                  blink=blink, frames=f"{sub_rel}/frames.mkv" if refiner is not None else None)
            self.run_stage(StageKind.TRAINER, action="render", params=params.model_dump(mode="json"))
            made = params.output
            if params.frames is not None:  # set exactly when a refiner is selected
                made = f"{sub_rel}/refined.mp4"
                refine = RefineParams(frames=params.frames, alpha=alpha_path(params.frames), audio=params.audio,
                                      output=made)
                self.run_stage(StageKind.REFINER, action="refine", params=refine.model_dump(mode="json"))
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp = output.with_name(f".{output.name}.tmp")
            try:  # like write_text_atomic: the old video or the whole new one, never a partial file
                shutil.copyfile(self.root / made, tmp)
                os.replace(tmp, output)
            finally:
                tmp.unlink(missing_ok=True)
        return output

    def run_one(self, kind: StageKind) -> dict[str, Any] | None:
        """Run one selected stage on a prepared run folder (cached like any other), after checking its runner
        and that the run folder holds what it needs. Returns its ``being.json`` entry."""
        manifest = self._require_prepared()
        self.preflight((kind,), provided=provided_by_run({k: v for k, v in manifest.stages.items() if k != str(kind)},
                                                         self.registry))
        with self._open():
            return self.run_stage(kind)

    def preflight(self, kinds: Iterable[StageKind], provided: Provided | None = None, has_audio: bool = True,
                  contracts: bool = True) -> None:
        """Fail before anything runs: a selected stage its runner cannot run (UsageError), or a stage's config
        that cannot work (``Stage.config_problems``: a model folder that is not there) and any promise of the
        chain that no earlier stage keeps (one ConfigError listing them all)."""
        kinds = [k for k in STAGE_ORDER if k in set(kinds)]
        problems = []
        for kind in kinds:
            rs = self.config.stages.get(kind)
            if rs is not None and kind not in self._checked:
                rs.runner.cls().check(rs.impl, rs.runner_options)
                problems += rs.config_problems()
        if contracts:
            chain = [self.config.stages[k].impl.cls for k in kinds if k in self.config.stages]
            problems += check_chain(chain, self.registry, provided, has_audio)
        if problems:
            raise ConfigError(self.config.source, problems)
        self._checked.update(k for k in kinds if k in self.config.stages)

    def facts(self) -> DatasetFacts:
        """The run's dataset facts (split included), as ingest recorded them."""
        try:
            return DatasetFacts.model_validate(self.manifest.data.get("dataset") or {})
        except ValidationError as exc:
            raise InputError(f"{self.root / 'being.json'} has no valid dataset facts "
                             f"({exc.errors()[0]['msg']}); run `being prepare` again") from None

    # --- steps ----------------------------------------------------------------------------------

    def _require_prepared(self) -> Manifest:
        if not (self.root / "being.json").is_file():
            raise InputError(f"{self.root} is not a prepared run folder (no being.json); run `being prepare` first")
        manifest = Manifest.load(self.root)
        facts = manifest.data.get("dataset") or {}
        want = self.config.raw.ingest.val_split
        if "n_frames" in facts and "val_start" in facts and split_point(facts["n_frames"], want) != facts["val_start"]:
            raise UsageError(f"{self.root} was prepared with frames {facts['val_start']}-{facts['n_frames'] - 1} "
                             f"held out, but {self.config.source} says ingest.val_split: {want}; the split is "
                             f"decided once, by `being prepare` (run it again to change it)")
        return manifest

    @contextlib.contextmanager
    def _open(self, run_log: bool = True) -> Iterator[Manifest]:
        """Lock the run folder, load (or start) ``being.json`` and, with ``run_log``, copy every log line to
        ``RUN/.being/log.txt``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            yield from self._opened(run_log)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One being process per run folder: a second one is refused, naming the first (``.being/lock``)."""
        import fcntl

        path = self.root / INTERNAL_DIR / "lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise InputError(f"{self.root} is in use by another being process (pid {other}); wait for it to "
                                 f"finish, or use another run folder") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _opened(self, run_log: bool) -> Iterator[Manifest]:
        self._manifest = Manifest.load(self.root)
        self._manifest.data["being_version"] = __version__
        facts = self._manifest.data.get("dataset") or {}
        if "n_frames" in facts and "val_start" not in facts:  # prepared before the split was a recorded fact
            facts["val_start"] = split_point(facts["n_frames"], self.config.raw.ingest.val_split)
            log.info("recorded the train/val split of %s: frames %d-%d held out", self.root, facts["val_start"],
                     facts["n_frames"] - 1)
        handler = None
        if run_log:
            path = self.root / RUN_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            thread = threading.get_ident()  # several runs in one process (being batch): each keeps its own lines
            handler.addFilter(lambda record: record.thread == thread)
            logging.getLogger("being").addHandler(handler)
        try:
            yield self._manifest
        finally:
            if handler is not None:
                logging.getLogger("being").removeHandler(handler)
                handler.close()

    def _save_config(self) -> None:
        write_text_atomic(self.root / CONFIG_NAME, dump_yaml(self.config))

    def _forced(self, name: str) -> bool:
        return name in self.force or "all" in self.force

    def _train(self) -> None:
        self.run_stage(StageKind.TRAINER)
        if StageKind.REFINER in self.config.stages:
            self.fit_refiner()

    def fit_refiner(self) -> None:
        """After the trainer: its replay of the run's own frames, the refiner's fit on them (which refines the
        held-out frames), and the trainer's score of those, beside its own held-out metrics. Each step cached."""
        self.run_stage(StageKind.TRAINER, action="replay")
        self.run_stage(StageKind.REFINER)
        score = ScoreParams(frames=REFINED_VAL, output=REFINED_METRICS)
        self.run_stage(StageKind.TRAINER, action="score", params=score.model_dump(mode="json"))

    def _encoder_run(self, sub_root: Path, enc: dict[str, Any]) -> Pipeline:
        """A pipeline for a render's sub-run: the encoder recorded in this run, whatever the config says now."""
        impl = self.registry.implementation(StageKind.AUDIO_ENCODER, enc["impl"])
        current = self.config.stages.get(StageKind.AUDIO_ENCODER)
        if current is not None and current.impl.cls is impl.cls:
            selection, runner, options = current.selection, current.runner, current.runner_options
        else:
            selection, runner = StageSelection(impl=impl.cls.name), self.registry.runner("inprocess")
            options = runner.cls.Options()
        stage = ResolvedStage(StageKind.AUDIO_ENCODER, selection, impl,
                              impl.cls.Config.model_validate(enc.get("config", {})), runner, options)
        config = ResolvedConfig(self.config.raw, {StageKind.AUDIO_ENCODER: stage}, self.config.source)
        return Pipeline(sub_root, config, self.registry, self.progress, self.force)

    def ingest(self, video: Path, info: MediaInfo | None = None) -> Crop | None:
        """Decode ``video`` into frames and audio unless the same video was decoded with the same settings;
        then record the dataset facts, the split decided here from ``ingest.val_split``. Returns the crop."""
        m = self.manifest
        cfg = self.config.raw.ingest
        info = info or probe(video)
        crop = self._crop(video, info)
        video_sha = sha256_file(video)
        key = sha256_json({"video": video_sha, "ingest": cfg.decoding(), "crop": crop and crop.to_dict()})
        entry = m.stages.get("ingest")
        if entry and entry.get("key") == key and m.outputs_intact("ingest") and not self._forced("ingest"):
            log.info("ingest: unchanged, skipped")
        else:
            started = time.monotonic()
            self.ran.append("ingest")
            result = ingest(video, self.root, cfg, self.progress, info, crop)
            m.data["source"] = {"video": str(video.resolve()), "sha256": video_sha, **info.to_dict()}
            m.data["dataset"] = {"n_frames": result.n_frames, "fps": cfg.fps, "width": result.width,
                                 "height": result.height, "has_audio": result.has_audio,
                                 "audio_seconds": result.audio_seconds}
            m.forget([r for r in m.data["files"] if r.startswith("ori_imgs/")])
            m.stages["ingest"] = {"status": "done", "key": key, "config": cfg.decoding(),
                                  "crop": crop and crop.to_dict(),
                                  "outputs": m.digests(result.outputs),
                                  "seconds": round(time.monotonic() - started, 3), "finished": _now()}
        m.data["dataset"]["val_start"] = split_point(m.data["dataset"]["n_frames"], cfg.val_split)
        m.save()
        return crop

    def _crop(self, video: Path, info: MediaInfo) -> Crop | None:
        """The square ingest keeps: the centred one, or (``ingest.crop: face``) one around the subject that the
        face tracker's ``locate`` action finds on frames sampled over the whole clip."""
        cfg = self.config.raw.ingest
        width, height = info.display_size
        if cfg.crop == "none":
            return None
        if cfg.crop == "center":
            return center_square(width, height)
        samples = sample_frames(video, info, self.root, cfg.crop_samples)
        facts = DatasetFacts(n_frames=len(samples), fps=cfg.fps, width=width, height=height, has_audio=False,
                             val_start=len(samples))
        self.run_stage(StageKind.FACE_TRACKER, action="locate", params={"frames": samples}, dataset=facts)
        path = self.root / SAMPLES_DIR / "faces.json"
        try:
            found = FaceBoxes.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise StageFailed(f"face_tracker locate wrote an invalid {path}: {exc}") from None
        if len(found.boxes) != len(samples):
            raise StageFailed(f"face_tracker locate wrote {len(found.boxes)} boxes to {path} for {len(samples)} "
                              f"sampled frames")
        boxes = [b for b in found.boxes if b is not None]
        if not boxes:
            raise InputError(f"no face found in any of the {len(samples)} frames sampled over {video} "
                             f"(ingest.crop: face, which looks for the subject to crop around); check that the "
                             f"video shows a face, or keep the centre with ingest.crop: center")
        crop = face_square(boxes, width, height, cfg.face_scale)
        log.info("ingest: the face-following crop keeps %s (a face in %d of %d sampled frames)", crop.describe(),
                 len(boxes), len(samples))
        return crop

    def run_stage(self, kind: StageKind, action: str = "run", params: dict[str, Any] | None = None,
                  dataset: DatasetFacts | None = None) -> dict[str, Any] | None:
        """Run one stage unless its cached outputs are still valid. Returns its manifest entry.

        ``action="render"`` runs a trainer's render under the manifest entry ``trainer:render``; ``dataset``
        replaces the run's facts (a face tracker's ``locate`` runs before ingest, on sampled frames).
        """
        rs = self.config.stages.get(kind)
        if rs is None:
            return None
        cls = rs.impl.cls
        m = self.manifest
        facts = dataset or self.facts()
        name = str(kind) if action == "run" else f"{kind}:{action}"
        if kind == StageKind.AUDIO_ENCODER and not facts.has_audio:
            log.info("%s: skipped, the clip has no audio", kind)
            self._retire(str(kind))
            return None
        required, declared, optional = cls.files(action)
        inputs = self._inputs(required, cls)
        upstream = {str(k): (m.stages.get(str(k)) or {}).get("info", {}) for k in cls.reads_info}
        config_json = rs.config.model_dump(mode="json")
        elsewhere = {f for a, fields in cls.action_settings.items() if a != action for f in fields}
        keyed = {k: v for k, v in config_json.items() if k not in elsewhere}
        key = sha256_json({"impl": cls.name, "version": cls.version, "config": keyed, "action": action,
                           "params": params or {}, "dataset": facts.model_dump(mode="json"), "upstream": upstream,
                           "inputs": m.digests(inputs)})
        entry = m.stages.get(name)
        if entry and entry.get("key") == key and m.outputs_intact(name) and not self._forced(str(kind)):
            log.info("%s '%s': unchanged, skipped", name, cls.name)
            return entry
        request = StageRequest(stage=str(kind), impl=cls.name, version=cls.version, action=action,
                               config=config_json, dataset=facts, upstream=upstream, inputs=inputs,
                               work_dir=f"{INTERNAL_DIR}/stages/{name.replace(':', '-')}/work", params=params or {})
        result = self._launch(name, rs, request, key)
        published = self._publish(name, declared, optional, cls, request)
        m.stages[name] = {
            "status": "done", "impl": cls.name, "version": cls.version, "distribution": rs.impl.distribution,
            "runner": rs.selection.runner, "config": config_json, "key": key, "inputs": m.digests(inputs),
            "outputs": m.digests(published), "info": result.info, "metrics": result.metrics,
            "seconds": result.seconds, "finished": _now(),
        }
        m.save()
        return m.stages[name]

    def _inputs(self, patterns: tuple[str, ...], cls: type[Stage[Any]]) -> list[str]:
        found = match_patterns(self.root, patterns)
        missing = [p for p, hits in found.items() if not hits]
        if missing:
            raise StageFailed(f"{cls.kind} '{cls.name}' needs {', '.join(missing)} in {self.root}, "
                              f"which no earlier stage wrote")
        optional = match_patterns(self.root, cls.optional_inputs)
        return [rel for hits in (*found.values(), *optional.values()) for rel in hits]

    def _launch(self, name: str, rs: ResolvedStage, request: StageRequest, key: str) -> StageResult:
        cls = rs.impl.cls
        work = self.root / request.work_dir
        _clear_work(work, key, resume=not self._forced(str(rs.kind)))
        request_path = work.parent / "request.json"
        write_json_atomic(request_path, request)
        previous = self.manifest.stages.get(name) or {}
        self.manifest.stages[name] = {"status": "running", "impl": cls.name, "started": _now(),
                                      "outputs": previous.get("outputs", {})}
        self.manifest.save()
        log.info("%s '%s': running (%s runner)", name, cls.name, rs.selection.runner)
        self.ran.append(name)
        rs.runner.cls().launch(rs.impl, request_path, self.root, rs.runner_options, self.progress)
        result_path = self.root / request.result_path
        if not result_path.is_file():
            raise StageFailed(f"{rs.kind} '{cls.name}' left no result ({result_path}); nothing it wrote was kept")
        try:
            result = StageResult.model_validate_json(result_path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise StageFailed(f"{rs.kind} '{cls.name}' wrote an invalid result {result_path}: "
                              f"{exc.errors()[0]['msg']}") from None
        if not result.ok:
            err = result.error
            raise StageFailed(f"{rs.kind} '{cls.name}' failed: {err.message if err else 'no reason given'}")
        return result

    def _publish(self, name: str, declared: tuple[str, ...], optional: tuple[str, ...], cls: type[Stage[Any]],
                 request: StageRequest) -> list[str]:
        """Check the stage's files against its declared outputs, then move them into the run folder."""
        out = self.root / request.out_dir
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        undeclared = [rel for rel in written if not matches_any(rel, (*declared, *optional))]
        if undeclared:
            raise StageFailed(f"{name} '{cls.name}' wrote files it does not declare: {', '.join(undeclared[:5])}"
                              f"{' ...' if len(undeclared) > 5 else ''}; nothing was kept")
        empty = [p for p in declared if not any(matches_any(rel, (p,)) for rel in written)]
        if empty:
            raise StageFailed(f"{name} '{cls.name}' did not write {', '.join(empty)}; nothing was kept")
        self._retire(name, keep=set(written))
        for rel in written:
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / rel, dest)
        shutil.rmtree(out)
        return written

    def _retire(self, kind: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Delete the files a stage published before, except those it is about to replace."""
        entry = self.manifest.stages.pop(kind, None) or {}
        stale = [rel for rel in entry.get("outputs", {}) if rel not in keep]
        for rel in stale:
            (self.root / rel).unlink(missing_ok=True)
        self.manifest.forget(stale)


def _clear_work(work: Path, key: str, resume: bool) -> None:
    """Empty a stage's work folder, keeping ``state/`` (checkpoints) when the same attempt resumes."""
    state_key = work / "state" / ".key"
    keep = resume and state_key.is_file() and state_key.read_text() == key
    if work.exists():
        for child in work.iterdir():
            if not (keep and child.name == "state"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    (work / "state").mkdir(parents=True, exist_ok=True)
    state_key.write_text(key)


def _safe_stem(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "audio"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
