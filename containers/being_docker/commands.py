"""``being images``: build, list, prune and lock the stages' container images."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from being_core import Command, CommandContext
from being_core.console import print_table
from being_core.errors import EXIT_OK
from being_core.plugins import load_registry
from being_core.stage import PREPARE_STAGES

from . import images


class ImagesCommand(Command):
    name = "images"
    help = "build, list and prune the stages' container images"
    shows_progress = True

    def configure(self, parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
        isub = parser.add_subparsers(dest="images_command", required=True, metavar="ACTION")
        ib = isub.add_parser("build", parents=parents, help="build images (default: every implementation with a lock)")
        ib.add_argument("names", nargs="*", metavar="IMPL", help="e.g. face-mediapipe (see `being plugins`)")
        ib.add_argument("--variant", choices=list(images.VARIANTS), default="cpu", help="torch build inside the image")
        ib.add_argument("--base", help="base image (default: being/base:<suite>, bootstrapped from the host's apt "
                                       "mirror; e.g. python:3.11-slim where a registry is reachable)")
        ib.add_argument("--devel-base", help="base of the stage that compiles an image's packages (default: "
                                             "being/base-devel:<suite>, the base plus g++ and Python's headers; "
                                             "--base when that is given)")
        ib.add_argument("--force", action="store_true", help="rebuild even when the image is current")
        ib.add_argument("--preprocess", action="store_true",
                        help="only the dataset stages' images (face, audio, AU, teeth), not the trainer's")
        il = isub.add_parser("list", parents=parents, help="Being's images: tag, size, age, current or stale")
        il.add_argument("--json", action="store_true", help="machine-readable output")
        ip = isub.add_parser("prune", parents=parents, help="remove stale images and those of uninstalled plugins")
        ip.add_argument("--all", action="store_true", help="remove every image Being built (not the base)")
        ik = isub.add_parser("lock", parents=parents,
                             help="re-resolve and pin an image's packages (host pip) into the plugin's source")
        ik.add_argument("names", nargs="*", metavar="IMPL")
        ik.add_argument("--variant", choices=list(images.VARIANTS), default="cpu")

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> int:
        registry = load_registry()
        out = ctx.console
        if args.images_command == "lock":
            with tempfile.TemporaryDirectory() as tmp:
                for spec in images.specs(registry, args.names, args.variant):
                    constraints = images.read_constraints(spec, Path(tmp) / "environment.txt")
                    out.out(f"wrote {images.write_lock(spec, constraints)}", highlight=False)
            return EXIT_OK
        c = images.client()
        if args.images_command == "build":
            todo = images.specs(registry, args.names, args.variant)
            if args.preprocess:
                todo = [spec for spec in todo if spec.impl.cls.kind in PREPARE_STAGES]
            base = args.base or images.ensure_base(c, ctx.progress)
            images.check_python(c, base)
            devel = None
            if any(spec.sources for spec in todo):  # an image that compiles a package while it is built
                devel = args.devel_base or (args.base if args.base else images.ensure_base(c, ctx.progress, devel=True))
                images.check_python(c, devel)
            for spec in todo:
                tag = images.build(c, spec, base, ctx.progress, args.force, devel_base=devel)
                if not ctx.quiet:
                    out.out(f"{tag} ready", highlight=False)
            return EXIT_OK
        if args.images_command == "prune":
            removed = images.prune(c, registry, args.all)
            out.out(f"removed {len(removed)} image(s){': ' + ', '.join(removed) if removed else ''}", highlight=False)
            return EXIT_OK
        rows = images.listing(c, registry)
        if args.json:
            out.out(json.dumps(rows, indent=2), highlight=False)
            return EXIT_OK
        print_table(out, "Being images", ["tag", "size", "created", "age", "status"],
               [[r["tag"], f"{r['size_mb']} MB", r["created"], r["age"], r["status"]] for r in rows])
        return EXIT_OK
