"""``being batch CLIP... -o DIR``: prepare and train every clip, one run folder per clip.

An argument that is a prepared run folder (it holds ``being.json``) is trained where it is: ``being batch
runs/*/ -o DIR`` trains every prepared subject.

Without ``--ray`` the subjects run one after another on this machine, each stage with the runner its config
names. With ``--ray`` every stage runs as a Ray task (``runner: ray``; a stage the config puts in Docker runs
in its image on the node) and all subjects are in flight at once: Ray runs as many tasks as the cluster has
resources for. A subject that fails does not stop the others; the exit code says whether any did. Each run
folder keeps its cache, so running the same command again does only what is not done.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from being_core import Command, CommandContext
from being_core.config import ResolvedConfig, crop_problems, load, resolve
from being_core.errors import EXIT_INPUT, EXIT_OK, EXIT_STAGE_FAILED, BeingError, ConfigError, UsageError, os_error_text
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline
from being_core.progress import PrefixReporter, Reporter
from being_core.protocol import write_text_atomic
from being_core.registry import Registry
from being_core.stage import STAGE_ORDER, StageKind

log = logging.getLogger("being.batch")
SUMMARY = "batch.json"
_subject = threading.local()


@dataclass
class Subject:
    name: str
    clip: Path | None  # None: ``root`` is a prepared run folder given as such
    root: Path
    status: str = "waiting"  # done, up to date, failed
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = EXIT_OK
    metrics: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)


def plan(clips: list[Path], out: Path) -> list[Subject]:
    """One subject per clip, named after the clip's file name (``-2``, ``-3`` for repeated names); a prepared run
    folder is its own subject."""
    subjects: list[Subject] = []
    seen: dict[str, int] = {}
    for clip in clips:
        prepared = clip.is_dir() and (clip / "being.json").is_file()
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", clip.name if prepared else clip.stem).strip("_")[:60] or "clip"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        subjects.append(Subject(name, None, clip) if prepared else Subject(name, clip, out / name))
    return subjects


def on_ray(config: ResolvedConfig, registry: Registry, address: str, trainers_per_gpu: int = 1) -> ResolvedConfig:
    """The same config with every stage as a Ray task; the runner it had runs it on the node (``inner``).
    ``trainers_per_gpu`` > 1 gives the trainer that share of a card (``runner_options.gpus``)."""
    data = config.to_dict()
    for kind, selection in data["stages"].items():
        if not selection:
            continue
        if selection.get("runner") != "ray":
            inner, inner_options = selection.get("runner", "inprocess"), selection.get("runner_options") or {}
            selection["runner"] = "ray"
            selection["runner_options"] = {"address": address, "inner": inner, "inner_options": inner_options}
        if kind == str(StageKind.TRAINER) and trainers_per_gpu > 1:
            selection["runner_options"] = {**(selection.get("runner_options") or {}),
                                           "gpus": round(1 / trainers_per_gpu, 4)}
    share = f", {trainers_per_gpu} trainers per GPU" if trainers_per_gpu > 1 else ""
    return resolve(data, registry, f"{config.source} (every stage on Ray{share})")


class _SubjectPrefix(logging.Filter):
    """Puts the subject's name in front of the console lines its thread logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(_subject, "name", None)
        if name and not getattr(record, "being_subject", None):
            record.being_subject = name
            record.msg = f"[{name}] {record.msg}"
        return True


class BatchCommand(Command):
    name = "batch"
    help = "prepare and train many clips, one run folder each, here or on a Ray cluster (--ray)"
    shows_progress = True

    def configure(self, parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
        parser.add_argument("clips", nargs="+", type=Path, metavar="CLIP", help="videos, one subject each")
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="folder that gets one run folder per clip (named after the clip) and batch.json")
        parser.add_argument("-c", "--config", help="run config for every subject: a file or a shipped name")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value (repeatable)")
        parser.add_argument("--ray", metavar="ADDRESS", nargs="?", const="auto",
                            help="run every stage on Ray, all subjects at once: 'auto' (default: the cluster "
                                 "started on this machine), 'local' (a Ray instance of this machine), host:port "
                                 "or ray://host:10001")
        parser.add_argument("--trainers-per-gpu", type=int, default=1, choices=range(1, 9), metavar="N",
                            help="with --ray: N trainers share each GPU (runner_options.gpus = 1/N); two keep a "
                                 "card busy that one 256-pixel trainer leaves half idle")
        parser.add_argument("--prepare-only", action="store_true", help="build the datasets, do not train")

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> int:
        from being_core.plugins import load_registry

        registry = load_registry()
        config = load(args.config, registry, args.overrides)
        if args.trainers_per_gpu > 1 and not args.ray:
            raise UsageError("--trainers-per-gpu shares the GPUs of a Ray cluster; give --ray too (without it the "
                             "batch trains one subject at a time)")
        if args.ray:
            config = on_ray(config, registry, args.ray, args.trainers_per_gpu)
        subjects = plan(args.clips, args.output)
        train = not args.prepare_only
        self._preflight(config, registry, args.output, train)
        if args.ray:
            from .runner import connect

            connect(args.ray)
        args.output.mkdir(parents=True, exist_ok=True)
        prefix = _SubjectPrefix()
        console_handlers = [h for h in logging.getLogger("being").handlers if not isinstance(h, logging.FileHandler)]
        for handler in console_handlers:
            handler.addFilter(prefix)
        started = time.monotonic()
        try:
            with ctx.progress.task(f"batch: {len(subjects)} subjects", len(subjects), unit="subject") as overall:
                def one(subject: Subject) -> None:
                    _run_subject(subject, config, registry, ctx.progress, train)
                    overall.advance()

                workers = len(subjects) if args.ray else 1
                with ThreadPoolExecutor(max_workers=min(workers, 256), thread_name_prefix="being-batch") as pool:
                    for future in [pool.submit(one, s) for s in subjects]:
                        future.result()
        finally:
            for handler in console_handlers:
                handler.removeFilter(prefix)
            _write_summary(args.output, subjects, config, time.monotonic() - started)
        if not ctx.quiet:
            _print_summary(ctx.console, subjects, _headline(config) if train else (), args.output)
        failed = [s for s in subjects if s.status == "failed"]
        return failed[0].exit_code if failed else EXIT_OK

    @staticmethod
    def _preflight(config: ResolvedConfig, registry: Registry, out: Path, train: bool) -> None:
        """What would fail every subject alike fails the batch before any starts."""
        if train and StageKind.TRAINER not in config.stages:
            raise UsageError(f"{config.source} selects no trainer (stages.trainer); use --prepare-only to only "
                             f"build the datasets")
        if problems := crop_problems(config):
            raise ConfigError(config.source, problems)
        if out.exists() and not out.is_dir():
            raise UsageError(f"batch output {out} exists and is not a folder")
        Pipeline(out / ".preflight", config, registry).preflight(STAGE_ORDER if train else
                                                                 [k for k in STAGE_ORDER if k != StageKind.TRAINER])


def _run_subject(subject: Subject, config: ResolvedConfig, registry: Registry, progress: Reporter,
                 train: bool) -> None:
    _subject.name = subject.name
    started = time.monotonic()
    pipeline = Pipeline(subject.root, config, registry, PrefixReporter(progress, f"{subject.name}: ", transient=True))
    try:
        if subject.clip is not None:
            manifest = pipeline.prepare(subject.clip, train=train)
        else:  # a prepared run folder: train it, or (--prepare-only) nothing to do
            manifest = pipeline.train() if train else Manifest.load(subject.root)
        trainer = (manifest.stages.get(str(StageKind.TRAINER)) or {}) if train else {}
        subject.metrics = dict(trainer.get("metrics") or {})
        subject.status = "done" if pipeline.ran else "up to date"
    except BeingError as exc:
        subject.status, subject.error, subject.exit_code = "failed", str(exc), exc.exit_code
    except OSError as exc:
        subject.status, subject.error, subject.exit_code = "failed", os_error_text(exc), EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - one subject's crash must not stop the others
        log.error("%s", traceback.format_exc())
        subject.status, subject.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        subject.exit_code = EXIT_STAGE_FAILED
    finally:
        subject.seconds = round(time.monotonic() - started, 1)
        subject.ran = list(pipeline.ran)
        if subject.error:
            log.error("%s", subject.error)
        _subject.name = None


def _headline(config: ResolvedConfig) -> tuple[str, ...]:
    trainer = config.stages.get(StageKind.TRAINER)
    return trainer.impl.cls.headline_metrics if trainer else ()


def _write_summary(out: Path, subjects: list[Subject], config: ResolvedConfig, seconds: float) -> None:
    if not out.is_dir():
        return
    doc = {"config": config.source, "seconds": round(seconds, 1),
           "subjects": [{**asdict(s), "clip": s.clip and str(s.clip), "root": str(s.root)} for s in subjects]}
    write_text_atomic(out / SUMMARY, json.dumps(doc, indent=1))


def _print_summary(console: Any, subjects: list[Subject], names: tuple[str, ...], out: Path) -> None:
    from being_core.console import print_table

    rows = []
    for s in subjects:
        shown = [str(s.metrics.get(k, "")) for k in names]
        rows.append([s.name, s.status, *shown, f"{s.seconds:g} s", s.error or str(s.root)])
    print_table(console, "Batch", ["subject", "status", *names, "time", "run folder / error"], rows)
    failed = sum(s.status == "failed" for s in subjects)
    console.out(f"{len(subjects) - failed} of {len(subjects)} subjects done"
                f"{f', {failed} failed' if failed else ''}; summary: {out / SUMMARY}", highlight=False)
