"""The ``being`` command. The only place that prints, and the only place that exits."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PLUGIN, EXIT_STAGE_FAILED, BeingError

log = logging.getLogger("being")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    common.add_argument("--traceback", action="store_true", help="show the full traceback on errors")

    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("-c", "--config", type=Path, help="run config (default: configs/default.yaml)")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. stages.audio_encoder.impl=wav2vec2 (repeatable)")

    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument("--force", action="append", default=[], metavar="STAGE",
                          help="redo a stage even if cached (ingest, face_tracker, ..., or all; repeatable)")

    p = argparse.ArgumentParser(prog="being", parents=[common],
                                description="Turn a talking video into an audio-driven 3D Gaussian avatar.")
    p.add_argument("--version", action="version", version=f"being {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("plugins", parents=[common], help="list installed stage implementations")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--strict", action="store_true", help="exit with code 4 when a plugin is broken")

    sp = sub.add_parser("config", parents=[common], help="show or validate a run config")
    csub = sp.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    csub.add_parser("show", parents=[common, cfg], help="print the resolved config with all defaults")
    csub.add_parser("validate", parents=[common, cfg], help="check a config against the installed plugins")

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

    sp = sub.add_parser("run", parents=[common, cfg, run_opts], help="prepare and train in one go")
    sp.add_argument("video", type=Path)
    sp.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    sp.add_argument("--no-audio", action="store_true", help=argparse.SUPPRESS)

    sp = sub.add_parser("images", parents=[common], help="build, list and prune the stages' container images")
    isub = sp.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    ib = isub.add_parser("build", parents=[common], help="build images (default: every implementation with one)")
    ib.add_argument("names", nargs="*", metavar="IMPL", help="e.g. face-mediapipe (see `being plugins`)")
    ib.add_argument("--variant", choices=["cpu", "cuda"], default="cpu", help="torch build inside the image")
    ib.add_argument("--base", help="base image (default: being/base:<suite>, bootstrapped from the host's apt "
                                   "mirror; e.g. python:3.11-slim where a registry is reachable)")
    ib.add_argument("--force", action="store_true", help="rebuild even when the image is current")
    ib.add_argument("--preprocess", action="store_true",
                    help="only the dataset stages' images (face, audio, AU, teeth), not the trainer's")
    il = isub.add_parser("list", parents=[common], help="Being's images: tag, size, age, current or stale")
    il.add_argument("--json", action="store_true", help="machine-readable output")
    ip = isub.add_parser("prune", parents=[common], help="remove stale images and those of uninstalled plugins")
    ip.add_argument("--all", action="store_true", help="remove every image Being built (not the base)")
    ik = isub.add_parser("lock", parents=[common], help="re-resolve and pin an image's packages (host pip)")
    ik.add_argument("names", nargs="*", metavar="IMPL")
    ik.add_argument("--variant", choices=["cpu", "cuda"], default="cpu")

    sp = sub.add_parser("stage", parents=[common], help="run one stage request (what runners launch)")
    sp.add_argument("request", type=Path)
    sp.add_argument("--root", type=Path, help="run folder (default: found from the request's path)")
    sp.add_argument("--progress", choices=["bars", "jsonl", "none"], default="bars")
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


def _log_to_run(run: Path) -> None:
    """Append everything (stage logs included) to ``RUN/.being/log.txt``."""
    path = run / ".being" / "log.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("being").addHandler(handler)


def _load_config(args, registry):
    from .config import load
    from .pipeline import CONFIG_NAME

    path = args.config
    run = getattr(args, "run", None)
    if path is None and run is not None and (Path(run) / CONFIG_NAME).is_file():
        path = Path(run) / CONFIG_NAME  # a run keeps using the config it was prepared with
    if getattr(args, "no_audio", False):
        args.overrides = [*args.overrides, "ingest.audio=optional"]
    return load(path, registry, args.overrides)


def _cmd_plugins(args, console) -> int:
    from .plugins import load_registry

    registry = load_registry()
    if args.json:
        data = {"implementations": [
            {"kind": str(i.cls.kind), "name": i.cls.name, "version": i.cls.version, "distribution": i.distribution,
             "needs_gpu": i.cls.needs_gpu, "image": i.cls.image(), "summary": i.cls.summary()}
            for i in registry.all()],
            "broken": [{"entry_point": b.entry_point, "distribution": b.distribution, "error": b.error}
                       for b in registry.broken]}
        console.print_json(json.dumps(data))
        return EXIT_PLUGIN if args.strict and registry.broken else EXIT_OK
    from rich.table import Table

    table = Table(title="Installed stage implementations")
    for col in ("stage", "name", "version", "distribution", "gpu", "image", "what it does"):
        table.add_column(col)
    for i in registry.all():
        table.add_row(str(i.cls.kind), i.cls.name, i.cls.version, i.distribution, "yes" if i.cls.needs_gpu else "",
                      i.cls.image(), i.cls.summary())
    console.print(table)
    for b in registry.broken:
        console.print(f"[red]broken[/red] {b.describe()}")
    return EXIT_PLUGIN if args.strict and registry.broken else EXIT_OK


def _cmd_config(args, console) -> int:
    from .config import dump_yaml
    from .plugins import load_registry

    resolved = _load_config(args, load_registry())
    if args.config_command == "show":
        console.print(dump_yaml(resolved), markup=False, highlight=False, end="")
    else:
        console.print(f"{resolved.source}: valid ({len(resolved.stages)} stages selected)")
    return EXIT_OK


def _pipeline(args, reporter, root: Path):
    from .pipeline import Pipeline
    from .plugins import load_registry

    registry = load_registry()
    resolved = _load_config(args, registry)
    return Pipeline(root, resolved, registry, reporter, set(getattr(args, "force", [])))


def _cmd_prepare(args, reporter) -> int:
    from .ingest import check_run_folder, probe

    from .stage import STAGE_ORDER, PREPARE_STAGES

    pipeline = _pipeline(args, reporter, args.output)
    pipeline.check(STAGE_ORDER if args.command == "run" else PREPARE_STAGES)  # before anything is written
    probe(args.video)
    check_run_folder(args.video, args.output)
    _log_to_run(args.output)
    pipeline.prepare(args.video)
    if args.command == "run":
        pipeline.train()
    log.info("done: %s", pipeline.root)
    return EXIT_OK


def _cmd_train(args, reporter) -> int:
    _log_to_run(args.run)
    _pipeline(args, reporter, args.run).train()
    return EXIT_OK


def _cmd_render(args, reporter) -> int:
    _log_to_run(args.run)
    out = _pipeline(args, reporter, args.run).render(args.audio, args.output)
    log.info("wrote %s", out)
    return EXIT_OK


def _cmd_stage(args, reporter) -> int:
    from .execute import execute
    from .progress import JsonLinesReporter, Reporter

    if args.progress == "jsonl":
        reporter = JsonLinesReporter()
    elif args.progress == "none":
        reporter = Reporter()
    result = execute(args.request, args.root, reporter)
    if not result.ok:
        log.error("%s", result.error.message if result.error else "stage failed")
    return EXIT_OK if result.ok else EXIT_STAGE_FAILED


def _cmd_images(args, console, reporter) -> int:
    from . import images
    from .plugins import load_registry

    registry = load_registry()
    if args.images_command == "lock":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for spec in images.specs(registry, args.names, args.variant):
                cons = images.read_constraints(spec, Path(tmp) / "environment.txt")
                console.print(f"wrote {images.write_lock(spec, cons)}")
        return EXIT_OK
    c = images.client()
    if args.images_command == "build":
        todo = images.specs(registry, args.names, args.variant)
        if args.preprocess:
            from .stage import PREPARE_STAGES

            todo = [spec for spec in todo if spec.impl.cls.kind in PREPARE_STAGES]
        base = args.base or images.ensure_base(c, reporter)
        images.check_python(c, base)
        for spec in todo:
            console.print(f"{images.build(c, spec, base, reporter, args.force)} ready")
        return EXIT_OK
    if args.images_command == "prune":
        removed = images.prune(c, registry, args.all)
        console.print(f"removed {len(removed)} image(s){': ' + ', '.join(removed) if removed else ''}")
        return EXIT_OK
    rows = images.listing(c, registry)
    if args.json:
        console.print_json(json.dumps(rows))
        return EXIT_OK
    from rich.table import Table

    table = Table(title="Being images")
    for col in ("tag", "size", "created", "age", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tag"], f"{r['size_mb']} MB", r["created"], r["age"], r["status"])
    console.print(table)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from .progress import Reporter

    args = _parser().parse_args(argv)
    err_console = Console(stderr=True)
    _setup_logging(args.quiet, err_console)
    reporter = Reporter()
    bars = None
    if not args.quiet and args.command in ("prepare", "train", "render", "run", "images") or (
            args.command == "stage" and args.progress == "bars" and not args.quiet):
        from .console import RichReporter

        bars = RichReporter(err_console)
        reporter = bars
    handlers = {"plugins": lambda: _cmd_plugins(args, Console()), "config": lambda: _cmd_config(args, Console()),
                "prepare": lambda: _cmd_prepare(args, reporter), "run": lambda: _cmd_prepare(args, reporter),
                "train": lambda: _cmd_train(args, reporter), "render": lambda: _cmd_render(args, reporter),
                "stage": lambda: _cmd_stage(args, reporter),
                "images": lambda: _cmd_images(args, Console(), reporter)}
    try:
        with bars if bars else contextlib.nullcontext():
            return handlers[args.command]()
    except BeingError as exc:
        if args.traceback:
            err_console.print_exception()
        err_console.print(f"ERROR: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("ERROR: interrupted; run the same command again to resume", markup=False)
        return EXIT_INTERRUPTED


def stage_main() -> int:
    """``being-stage REQUEST``: the entry point containers run."""
    return main(["stage", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
