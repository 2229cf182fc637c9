"""Runs: ingest, then each selected stage in order, cached by inputs, implementation, version and config.

A stage writes into ``.being/stages/<kind>/work/out``; only after its ``result.json`` says it succeeded
and its files match what it declared are they moved into the run folder and recorded in ``being.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import ResolvedConfig, ResolvedStage, StageSelection, dump_yaml
from .errors import InputError, StageFailed, UsageError
from .ingest import AUDIO_FILE, check_run_folder, extract_audio, ingest, probe
from .manifest import INTERNAL_DIR, Manifest, match_patterns, matches_any, sha256_file, sha256_json
from .plugins import load_registry
from .progress import Reporter
from .protocol import StageRequest, StageResult, write_json_atomic
from .registry import Registry
from .runners import get_runner
from .stage import PREPARE_STAGES, Stage, StageKind

log = logging.getLogger("being.pipeline")
CONFIG_NAME = "config.yaml"


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
        self.manifest: Manifest | None = None
        self._checked: set[StageKind] = set()  # stages whose runner can run them

    # --- public entry points --------------------------------------------------------------------

    def prepare(self, video: Path) -> Manifest:
        """Ingest ``video`` and run every selected dataset stage (face, audio, AU, teeth)."""
        video = Path(video)
        self.check(PREPARE_STAGES)
        info = probe(video)
        check_run_folder(video, self.root)
        self._open()
        self._save_config()
        self.ingest(video, info)
        for kind in PREPARE_STAGES:
            self.run_stage(kind)
        return self.manifest

    def train(self) -> Manifest:
        """Run the trainer (and refiner, when selected) on a prepared run folder."""
        self.check((StageKind.TRAINER, StageKind.REFINER))
        self._open(require_prepared=True)
        if StageKind.TRAINER not in self.config.stages:
            raise InputError(f"{self.config.source} selects no trainer (stages.trainer)")
        self._save_config()
        self.run_stage(StageKind.TRAINER)
        self.run_stage(StageKind.REFINER)
        return self.manifest

    def render(self, audio: Path, output: Path) -> Path:
        """Make the trained avatar say ``audio``; writes ``output`` (.mp4) and returns its path.

        The audio is encoded by the encoder recorded in this run (same implementation and config), in a
        sub-run folder ``renders/<audio>-<hash>/`` that keeps its own manifest and cache.
        """
        audio, output = Path(audio), Path(output)
        if output.suffix.lower() != ".mp4":
            raise InputError(f"render output {output} must end in .mp4")
        self.check((StageKind.AUDIO_ENCODER, StageKind.TRAINER))
        self._open(require_prepared=True)
        if (self.manifest.stages.get(str(StageKind.TRAINER)) or {}).get("status") != "done":
            raise InputError(f"{self.root} has no trained avatar; run `being train {self.root}` first")
        enc = self.manifest.stages.get(str(StageKind.AUDIO_ENCODER)) or {}
        if enc.get("status") != "done":
            raise InputError(f"{self.root} has no audio features, so its encoder is unknown; prepare it with audio")
        info = probe(audio)
        if info.audio_codec is None:
            raise InputError(f"{audio} has no audio stream")
        sha = sha256_file(audio)
        sub_rel = f"renders/{_safe_stem(audio.stem)}-{sha[:8]}"
        sub_root = self.root / sub_rel
        sub_root.mkdir(parents=True, exist_ok=True)
        seconds = extract_audio(audio, sub_root, self.progress)
        fps = self.manifest.data["dataset"]["fps"]
        n_frames = max(1, round(seconds * fps))
        # The sub-run uses the recorded encoder, whatever the current config says.
        cls = self.registry.get(StageKind.AUDIO_ENCODER, enc["impl"])
        selection = self.config.stages.get(StageKind.AUDIO_ENCODER)
        sub_config = ResolvedConfig(self.config.raw, {StageKind.AUDIO_ENCODER: ResolvedStage(
            StageKind.AUDIO_ENCODER,
            selection.selection if selection and selection.selection.impl == cls.name else StageSelection(impl=cls.name),
            cls.Config.model_validate(enc.get("config", {})))}, self.config.source)
        sub = Pipeline(sub_root, sub_config, self.registry, self.progress, self.force)
        sub._open()
        sub.manifest.data["dataset"] = {"n_frames": n_frames, "fps": fps, "has_audio": True, "audio_seconds": seconds,
                                        "width": self.manifest.data["dataset"]["width"],
                                        "height": self.manifest.data["dataset"]["height"]}
        sub.manifest.data["source"] = {"audio": str(audio.resolve()), "sha256": sha}
        features = sub.run_stage(StageKind.AUDIO_ENCODER)["info"]["file"]
        self.run_stage(StageKind.TRAINER, action="render", params={
            "audio": f"{sub_rel}/{AUDIO_FILE}", "features": f"{sub_rel}/{features}", "n_frames": n_frames,
            "output": f"{sub_rel}/render.mp4"})
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        shutil.copyfile(self.root / sub_rel / "render.mp4", tmp)
        os.replace(tmp, output)
        return output

    def check(self, kinds) -> None:
        """Fail before anything runs when a selected stage cannot run on its runner. A stage is checked once
        per pipeline (the CLI checks them all before it writes anything, then each step would again)."""
        for kind in kinds:
            rs = self.config.stages.get(kind)
            if rs is not None and kind not in self._checked:
                cls = self.registry.get(kind, rs.selection.impl)
                get_runner(rs.selection.runner).check(cls, rs.selection.runner_options)
                self._checked.add(kind)

    # --- steps ----------------------------------------------------------------------------------

    def _open(self, require_prepared: bool = False) -> None:
        if require_prepared and not (self.root / "being.json").is_file():
            raise InputError(f"{self.root} is not a prepared run folder (no being.json); run `being prepare` first")
        self.manifest = Manifest.load(self.root)
        self.manifest.data["being_version"] = __version__

    def _save_config(self) -> None:
        path = self.root / CONFIG_NAME
        tmp = path.with_name(f".{CONFIG_NAME}.tmp")
        tmp.write_text(dump_yaml(self.config), encoding="utf-8")
        os.replace(tmp, path)

    def _forced(self, name: str) -> bool:
        return name in self.force or "all" in self.force

    def ingest(self, video: Path, info=None) -> None:
        m = self.manifest
        cfg = self.config.raw.ingest
        video_sha = sha256_file(video)
        key = sha256_json({"video": video_sha, "ingest": cfg.model_dump(mode="json")})
        entry = m.stages.get("ingest")
        if entry and entry.get("key") == key and m.outputs_intact("ingest") and not self._forced("ingest"):
            log.info("ingest: unchanged, skipped")
            return
        started = time.monotonic()
        result = ingest(video, self.root, cfg, self.progress, info)
        m.data["source"] = {"video": str(video.resolve()), "sha256": video_sha, **(info or probe(video)).to_dict()}
        m.data["dataset"] = {"n_frames": result.n_frames, "fps": cfg.fps, "width": result.width,
                             "height": result.height, "has_audio": result.has_audio,
                             "audio_seconds": result.audio_seconds}
        m.forget([r for r in m.data["files"] if r.startswith("ori_imgs/")])
        m.stages["ingest"] = {"status": "done", "key": key, "config": cfg.model_dump(mode="json"),
                              "outputs": m.digests(result.outputs),
                              "seconds": round(time.monotonic() - started, 3), "finished": _now()}
        m.save()

    def run_stage(self, kind: StageKind, action: str = "run",
                  params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Run one stage unless its cached outputs are still valid. Returns its manifest entry.

        ``action="render"`` runs a trainer's render under the manifest entry ``trainer:render``.
        """
        rs = self.config.stages.get(kind)
        if rs is None:
            return None
        cls = self.registry.get(kind, rs.selection.impl)
        m = self.manifest
        name = str(kind) if action == "run" else f"{kind}:{action}"
        if kind == StageKind.AUDIO_ENCODER and not m.data.get("dataset", {}).get("has_audio", True):
            log.info("%s: skipped, the clip has no audio", kind)
            self._retire(str(kind))
            return None
        inputs = self._inputs(cls.inputs if action == "run" else cls.render_inputs, cls)
        config_json = rs.config.model_dump(mode="json")
        key = sha256_json({"impl": cls.name, "version": cls.version, "config": config_json,
                           "action": action, "params": params or {}, "inputs": m.digests(inputs)})
        entry = m.stages.get(name)
        if entry and entry.get("key") == key and m.outputs_intact(name) and not self._forced(str(kind)):
            log.info("%s '%s': unchanged, skipped", name, cls.name)
            return entry
        result = self._launch(name, kind, cls, rs, inputs, action, params or {}, key)
        declared = cls.outputs if action == "run" else cls.render_outputs
        published = self._publish(name, declared, cls.optional_outputs if action == "run" else (), cls, result)
        m.stages[name] = {
            "status": "done", "impl": cls.name, "version": cls.version, "distribution":
            self.registry.implementation(kind, cls.name).distribution, "runner": rs.selection.runner,
            "config": config_json, "key": key, "inputs": m.digests(inputs), "outputs": m.digests(published),
            "info": result.info, "metrics": result.metrics, "seconds": result.seconds, "finished": _now(),
        }
        m.save()
        return m.stages[name]

    def _inputs(self, patterns: tuple[str, ...], cls: type[Stage]) -> list[str]:
        found = match_patterns(self.root, patterns)
        missing = [p for p, hits in found.items() if not hits]
        if missing:
            raise StageFailed(f"{cls.kind} '{cls.name}' needs {', '.join(missing)} in {self.root}, "
                              f"which no earlier stage wrote")
        optional = match_patterns(self.root, cls.optional_inputs)
        return [rel for hits in (*found.values(), *optional.values()) for rel in hits]

    def _launch(self, name: str, kind: StageKind, cls: type[Stage], rs: ResolvedStage, inputs: list[str],
                action: str, params: dict[str, Any], key: str) -> StageResult:
        stage_dir = self.root / INTERNAL_DIR / "stages" / name.replace(":", "-")
        work = stage_dir / "work"
        _clear_work(work, key, resume=not self._forced(str(kind)))
        request = StageRequest(stage=str(kind), impl=cls.name, version=cls.version, action=action,
                               config=rs.config.model_dump(mode="json"), inputs=inputs,
                               work_dir=work.relative_to(self.root).as_posix(), params=params)
        request_path = stage_dir / "request.json"
        write_json_atomic(request_path, request)
        previous = self.manifest.stages.get(name) or {}
        self.manifest.stages[name] = {"status": "running", "impl": cls.name, "started": _now(),
                                           "outputs": previous.get("outputs", {})}
        self.manifest.save()
        log.info("%s '%s': running (%s runner)", kind, cls.name, rs.selection.runner)
        get_runner(rs.selection.runner).launch(request_path, self.root, cls, rs.selection.runner_options,
                                               self.progress, self.registry)
        result_path = self.root / request.result_path
        if not result_path.is_file():
            raise StageFailed(f"{kind} '{cls.name}' left no result ({result_path}); nothing it wrote was kept")
        try:
            result = StageResult.model_validate_json(result_path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise StageFailed(f"{kind} '{cls.name}' wrote an invalid result {result_path}: {exc.errors()[0]['msg']}")
        if not result.ok:
            err = result.error
            raise StageFailed(f"{kind} '{cls.name}' failed: {err.message if err else 'no reason given'}")
        return result

    def _publish(self, name: str, declared: tuple[str, ...], optional: tuple[str, ...], cls: type[Stage],
                 result: StageResult) -> list[str]:
        """Check the stage's files against its declared outputs, then move them into the run folder."""
        out = self.root / INTERNAL_DIR / "stages" / name.replace(":", "-") / "work" / "out"
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

    def _retire(self, kind: str, keep: set[str] = frozenset()) -> None:
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
