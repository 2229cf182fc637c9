"""``being serve RUN [RUN...]``: load each trained avatar once and serve live sessions until interrupted."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from being_core import Command, CommandContext
from being_core.errors import EXIT_OK, UsageError

log = logging.getLogger("being.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeCommand(Command):
    name = "serve"
    help = "serve trained avatars live: WebSocket and WebRTC sessions, and a web page"
    shows_progress = True

    def configure(self, parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
        parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="trained run folders")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--token", default=os.environ.get("BEING_SERVE_TOKEN"),
                            help="clients must give this token (default: $BEING_SERVE_TOKEN); required when "
                                 "--host is not a loopback address")
        parser.add_argument("--device", help="where the avatars render (cpu, cuda, cuda:1; default: as trained)")
        parser.add_argument("--max-sessions", type=int, default=32,
                            help="concurrent sessions at most (all workers together)")
        parser.add_argument("--workers", type=int, default=1,
                            help="server processes sharing the port, each with the avatars loaded and batching its "
                                 "own sessions (one Python process serves about 8 to 16 sessions at 25 fps)")
        parser.add_argument("--max-batch", type=int, default=32, help="frames rendered in one batch at most")
        parser.add_argument("--render-threads", type=int,
                            help="render threads per avatar (default: 1 on a GPU; on a CPU one per core, each "
                                 "rendering its own frames with one PyTorch thread)")
        parser.add_argument("--idle-timeout", type=float, default=300.0,
                            help="close a session that sends nothing for this many seconds")
        parser.add_argument("--max-message", type=int, default=256 * 1024,
                            help="bytes per WebSocket message at most")
        parser.add_argument("--cpu-jpeg", action="store_true",
                            help="encode WebSocket frames on the CPU even where the GPU can (torchvision's nvJPEG)")
        parser.add_argument("--switch-ms", type=float, default=1.0,
                            help="Python's thread switch interval in ms (its default is 5): how soon the render "
                                 "thread gets the interpreter back from the sessions' work")

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> int:
        from .session import Settings
        from .workers import Plan, load_hosts, serve_workers

        if not is_loopback(args.host) and not args.token:
            raise UsageError(f"--host {args.host} lets other machines in: give --token (or set BEING_SERVE_TOKEN) "
                             "so that only your clients can use the avatars")
        for name, value, low in (("--port", args.port, 0), ("--max-sessions", args.max_sessions, 1),
                                 ("--max-batch", args.max_batch, 1), ("--idle-timeout", args.idle_timeout, 0.1),
                                 ("--max-message", args.max_message, 1024), ("--workers", args.workers, 1),
                                 ("--render-threads", 1 if args.render_threads is None else args.render_threads, 1)):
            if value < low:
                raise UsageError(f"{name} {value}: must be at least {low}")
        if not 0.01 <= args.switch_ms <= 100:
            raise UsageError(f"--switch-ms {args.switch_ms}: give 0.01 to 100")
        plan = Plan(runs=[str(r) for r in args.runs], device=args.device, max_batch=args.max_batch,
                    gpu_jpeg=not args.cpu_jpeg, token=args.token, ws_max_size=args.max_message,
                    switch_ms=args.switch_ms, render_threads=args.render_threads,
                    settings=Settings(idle_timeout=args.idle_timeout, max_message=args.max_message,
                                      max_sessions=args.max_sessions))
        shown = f"[{args.host}]" if ":" in args.host else args.host
        if args.workers > 1:
            sock = bind(args.host, args.port)
            ctx.console.print(f"being serve: {', '.join(map(str, args.runs))} at http://{shown}:"
                              f"{sock.getsockname()[1]}/ in {args.workers} worker processes (Ctrl+C stops)")
            try:
                serve_workers(plan, args.workers, sock, ctx.console)
            finally:
                sock.close()
            return EXIT_OK
        import uvicorn

        from .app import Server, make_app

        sys.setswitchinterval(args.switch_ms / 1000)
        hosts = load_hosts(plan, ctx.progress)
        try:
            server = Server(hosts, plan.settings, args.token)
            config = uvicorn.Config(make_app(server), host=args.host, port=args.port, ws_max_size=args.max_message,
                                    log_level="warning", lifespan="off")
            names = ", ".join(f"{n} ({h.run.avatar.width}x{h.run.avatar.height}, {h.run.avatar.device})"
                              for n, h in hosts.items())
            ctx.console.print(f"being serve: {names} at http://{shown}:{args.port}/ (Ctrl+C stops)")
            uvicorn.Server(config).run()
        finally:
            for host in hosts.values():
                host.close()
        return EXIT_OK


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the worker processes share; UsageError when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
