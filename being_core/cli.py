"""The ``being`` command. The only place that prints, and the only place that exits."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PLUGIN, EXIT_STAGE_FAILED, BeingError, os_error_text

log = logging.getLogger("being")

BUILTIN_COMMANDS = frozenset({"plugins", "config", "prepare", "train", "render", "run", "stage"})


def _common(suppress: bool) -> argparse.ArgumentParser:
    """``-q`` and ``--traceback``, accepted before and after the command (``being -q prepare`` works: the
    subcommand's copy leaves the value alone unless it is given there)."""
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else False
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars and no summary: warnings and errors only")
    p.add_argument("--traceback", action="store_true", default=default, help="show the full traceback on errors")
    return p


def _parser(commands) -> argparse.ArgumentParser:
    common = _common(suppress=True)
    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("-c", "--config", help="run config: a file, or a shipped config by name (default, cpu-small, "
                                            "docker); default: the run's own config, else 'default'")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. stages.audio_encoder.impl=wav2vec2 (repeatable)")

    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument("--force", action="append", default=[], metavar="STAGE",
                          help="redo a stage even if cached (ingest, face_tracker, ..., or all; repeatable)")

    p = argparse.ArgumentParser(prog="being", parents=[_common(suppress=False)],
                                description="Turn a talking video into an audio-driven 3D Gaussian avatar.")
    p.add_argument("--version", action="version", version=f"being {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("plugins", parents=[common], help="list installed stage implementations and runners")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--strict", action="store_true", help="exit with code 4 when a plugin is broken")

    sp = sub.add_parser("config", parents=[common], help="show or validate a run config")
    csub = sp.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    csub.add_parser("show", parents=[common, cfg], help="print the resolved config with all defaults")
    csub.add_parser("validate", parents=[common, cfg],
                    help="check a config against the installed plugins and the promises between its stages")

    sp = sub.add_parser("prepare", parents=[common, cfg, run_opts], help="build the dataset from a video")
    sp.add_argument("video", type=Path)
    sp.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    sp.add_argument("--no-audio", action="store_true", help="allow a video without an audio stream")

    sp = sub.add_parser("train", parents=[common, cfg, run_opts], help="train the avatar of a prepared run")
    sp.add_argument("run", type=Path)

    sp = sub.add_parser("render", parents=[common, cfg], help="make the avatar say new audio")
    sp.add_argument("run", type=Path)
    sp.add_argument("--audio", type=Path, required=True)
    sp.add_argument("-o", "--output", type=Path, required=True, help="video file to write (.mp4)")
    sp.add_argument("--pose", default="train", metavar="train|still|POSES.npy",
                    help="head motion: the training frames' (default), one still pose, or a .npy of [T, 6] poses")
    sp.add_argument("--blink", default="track", choices=("track", "natural", "none"),
                    help="blinks: from the training frames (default), a natural schedule, or none")

    sp = sub.add_parser("run", parents=[common, cfg, run_opts], help="prepare and train in one go")
    sp.add_argument("video", type=Path)
    sp.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    sp.add_argument("--no-audio", action="store_true", help=argparse.SUPPRESS)

    sp = sub.add_parser("stage", parents=[common], help="run one stage request (what runners launch)")
    sp.add_argument("request", type=Path)
    sp.add_argument("--root", type=Path, help="run folder (default: found from the request's path)")
    sp.add_argument("--progress", choices=["bars", "jsonl", "none"], default="bars")

    for command in commands.all():
        command.configure(sub.add_parser(command.name, parents=[common], help=command.help), [common])
    return p


def _setup_logging(quiet: bool, console) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger("being")
    root.handlers.clear()
    root.setLevel(logging.INFO)
    handler = RichHandler(console=console, show_time=False, show_path=False)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.addFilter(lambda record: not record.name.startswith("being.container"))  # run log only
    root.addHandler(handler)


def _load_config(args, registry):
    from .config import load
    from .pipeline import CONFIG_NAME

    source = args.config
    run = getattr(args, "run", None)
    if source is None and run is not None and (Path(run) / CONFIG_NAME).is_file():
        source = Path(run) / CONFIG_NAME  # a run keeps using the config it was prepared with
    if getattr(args, "no_audio", False):
        args.overrides = [*args.overrides, "ingest.audio=optional"]
    return load(source, registry, args.overrides)


def _cmd_plugins(args, console, registry) -> int:
    from .console import print_table

    if args.json:
        data = {"implementations": [
            {"kind": str(i.cls.kind), "name": i.cls.name, "version": i.cls.version, "distribution": i.distribution,
             "needs_gpu": i.cls.needs_gpu, "image": i.cls.image(), "provides": list(i.cls.provides),
             "requires": list(i.cls.requires), "summary": i.cls.summary()}
            for i in registry.all()],
            "runners": [{"name": r.cls.name, "distribution": r.distribution, "summary": r.cls.summary()}
                        for r in registry.runners()],
            "broken": [{"entry_point": b.entry_point, "distribution": b.distribution, "error": b.error}
                       for b in registry.broken]}
        console.out(json.dumps(data, indent=2), highlight=False)
        return EXIT_PLUGIN if args.strict and registry.broken else EXIT_OK
    print_table(console, "Installed stage implementations",
           ["stage", "name", "version", "distribution", "gpu", "image", "what it does"],
           [[str(i.cls.kind), i.cls.name, i.cls.version, i.distribution, "yes" if i.cls.needs_gpu else "",
             i.cls.image(), i.cls.summary()] for i in registry.all()])
    console.out("")
    print_table(console, "Runners", ["runner", "distribution", "what it does"],
           [[r.cls.name, r.distribution, r.cls.summary()] for r in registry.runners()])
    for b in registry.broken:
        console.out(f"broken: {b.describe()}", highlight=False)
    return EXIT_PLUGIN if args.strict and registry.broken else EXIT_OK


def _cmd_config(args, console, registry) -> int:
    from .config import dump_yaml
    from .contracts import check_chain
    from .errors import ConfigError

    resolved = _load_config(args, registry)
    if args.config_command == "show":
        console.out(dump_yaml(resolved), highlight=False, end="")
        return EXIT_OK
    chain = [rs.impl.cls for rs in resolved.stages.values()]
    problems = [p for rs in resolved.stages.values() for p in rs.config_problems()]
    problems += check_chain(chain, registry)
    if problems:
        raise ConfigError(resolved.source, problems)
    console.out(f"{resolved.source}: valid ({len(resolved.stages)} stages selected)", highlight=False)
    return EXIT_OK


def _pipeline(args, reporter, root: Path, registry):
    from .pipeline import Pipeline

    resolved = _load_config(args, registry)
    return Pipeline(root, resolved, registry, reporter, set(getattr(args, "force", [])))


def _summary(console, pipeline, trained: bool) -> None:
    """What a user wants after a run: where it is, the held-out numbers, the videos to look at, what next."""
    root = pipeline.root
    console.out(f"done: {root}", highlight=False)
    entry = pipeline.manifest.stages.get("trainer") if trained else None
    if entry is None:
        console.out(f"next: being train {root}", highlight=False)
        return
    trainer = pipeline.config.stages.get("trainer")
    names = trainer.impl.cls.headline_metrics if trainer else ()
    metrics = entry.get("metrics", {})
    shown = [f"{k} {metrics[k]}" for k in names if metrics.get(k) is not None]
    if shown:
        console.out(f"held-out metrics ({entry['impl']}): {', '.join(shown)}", highlight=False)
    refiner = pipeline.config.stages.get("refiner")
    scored = pipeline.manifest.stages.get("trainer:score") if refiner else None
    if refiner and scored:  # the same frames, the same protocols: with the refiner beside without
        refined = scored.get("metrics", {})
        side = [f"{k} {refined[k]}{_delta(refined[k], metrics.get(k))}" for k in names
                if refined.get(k) is not None and k != "val_frames"]
        console.out(f"held-out metrics with refiner '{refiner.impl.cls.name}': {', '.join(side)}", highlight=False)
    for rel in entry.get("outputs", {}):
        if rel.endswith(".mp4"):
            console.out(f"video: {root / rel}", highlight=False)
    console.out(f"next: being render {root} --audio new.wav -o says.mp4", highlight=False)


def _delta(value, before) -> str:
    """`` (+0.52)`` after a refined metric: the change from the unrefined one, when both are numbers."""
    if isinstance(value, int | float) and isinstance(before, int | float) and not isinstance(value, bool):
        diff = value - before
        return f" ({diff:+.{3 if abs(diff) < 0.1 else 2}f})" if diff else " (=)"
    return ""


def _cmd_prepare(args, ctx, registry) -> int:
    pipeline = _pipeline(args, ctx.progress, args.output, registry)
    pipeline.prepare(args.video, train=args.command == "run")
    if not ctx.quiet:
        _summary(ctx.console, pipeline, trained=args.command == "run")
    return EXIT_OK


def _cmd_train(args, ctx, registry) -> int:
    pipeline = _pipeline(args, ctx.progress, args.run, registry)
    pipeline.train()
    if not ctx.quiet:
        _summary(ctx.console, pipeline, trained=True)
    return EXIT_OK


def _cmd_render(args, ctx, registry) -> int:
    pipeline = _pipeline(args, ctx.progress, args.run, registry)
    out = pipeline.render(args.audio, args.output, pose=args.pose, blink=args.blink)
    if not ctx.quiet:
        ctx.console.out(f"wrote {out}", highlight=False)
        metrics = (pipeline.manifest.stages.get("trainer:render") or {}).get("metrics", {})
        trainer = pipeline.config.stages.get("trainer")
        names = trainer.impl.cls.render_headline_metrics if trainer else ()
        shown = [f"{k} {metrics[k]}" for k in names if metrics.get(k) is not None]
        if shown:
            ctx.console.out(f"render metrics: {', '.join(shown)}", highlight=False)
    return EXIT_OK


def _cmd_stage(args, ctx, registry) -> int:
    from .execute import execute
    from .progress import JsonLinesReporter, Reporter

    reporter = ctx.progress
    if args.progress == "jsonl":
        reporter = JsonLinesReporter()
    elif args.progress == "none":
        reporter = Reporter()
    result = execute(args.request, args.root, reporter, registry=registry)
    if not result.ok:
        log.error("%s", result.error.message if result.error else "stage failed")
    return EXIT_OK if result.ok else EXIT_STAGE_FAILED


BUILTIN = {"plugins": _cmd_plugins, "config": _cmd_config, "prepare": _cmd_prepare, "run": _cmd_prepare,
           "train": _cmd_train, "render": _cmd_render, "stage": _cmd_stage}
WITH_PROGRESS = {"prepare", "train", "render", "run"}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from .commands import CommandContext
    from .plugins import collect_commands, load_plugins
    from .progress import Reporter

    pm, registry = load_plugins()
    commands = collect_commands(pm, set(BUILTIN_COMMANDS), registry.broken)
    args = _parser(commands).parse_args(argv)
    err_console = Console(stderr=True)
    _setup_logging(args.quiet, err_console)
    plugin_command = next((c for c in commands.all() if c.name == args.command), None)
    reporter: Reporter = Reporter()
    bars = None
    wants_bars = args.command in WITH_PROGRESS or (plugin_command is not None and plugin_command.shows_progress) or (
        args.command == "stage" and args.progress == "bars")
    if wants_bars and not args.quiet:
        from .console import RichReporter

        bars = RichReporter(err_console)
        reporter = bars
    ctx = CommandContext(console=Console(), progress=reporter, quiet=args.quiet)
    try:
        with bars if bars else contextlib.nullcontext():
            if plugin_command is not None:
                return plugin_command.run(args, ctx)
            if args.command in ("plugins", "config"):
                return BUILTIN[args.command](args, ctx.console, registry)
            return BUILTIN[args.command](args, ctx, registry)
    except BeingError as exc:
        if args.traceback:
            err_console.print_exception()
        err_console.print(f"ERROR: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except OSError as exc:  # the file system said no: a full disk, a read-only or vanished folder
        if args.traceback:
            err_console.print_exception()
        err_console.print(f"ERROR: {os_error_text(exc)}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_INPUT
    except KeyboardInterrupt:
        again = ("run the same command again: the new audio's features are kept, the frames are rendered anew"
                 if args.command == "render" else "run the same command again to resume")
        err_console.print(f"ERROR: interrupted; {again}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED


def stage_main() -> int:
    """``being-stage REQUEST``: the entry point containers run."""
    return main(["stage", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
