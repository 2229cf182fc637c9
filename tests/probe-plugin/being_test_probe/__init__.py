"""teeth_segmenter 'probe': behaves (or misbehaves) as its ``mode`` says, to test runners."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Literal

from pydantic import Field

from being_core import StageConfig, StageReport, TeethSegmenter, hookimpl


class ProbeConfig(StageConfig):
    mode: Literal["ok", "crash", "sleep", "escape"] = Field("ok", description="What the stage does.")


class Probe(TeethSegmenter):
    """Writes empty masks and reports its uid, gid and whether it can reach the network."""

    name = "probe"
    version = "0.1.0"
    Config = ProbeConfig

    def run(self, ctx):
        import numpy as np

        mode = ctx.config.mode
        if mode == "crash":
            print("probe: crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        if mode == "sleep":
            time.sleep(600)
        if mode == "escape":
            (ctx.root / "escaped.txt").write_text("out of bounds")
        frames = sorted((ctx.root / "ori_imgs").glob("*.jpg"), key=lambda p: int(p.stem))
        for frame in ctx.progress.track(frames, "probe masks", unit="frame"):
            np.save(ctx.output(f"teeth_mask/{frame.stem}.npy"), np.zeros((4, 4), bool))
        print("probe: done", file=sys.stderr, flush=True)
        return StageReport(info={"uid": os.getuid(), "gid": os.getgid(), "network": _network(),
                                 "memory_limit": _memory_limit(), **_hardening()})


def _hardening() -> dict:
    """What the container lets this process do: capabilities, privilege gain, executing from /tmp, pids."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    script = "/tmp/probe-exec.sh"
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    try:
        import subprocess

        subprocess.run([script], check=True)
        tmp_exec = "ran"
    except OSError as exc:
        tmp_exec = f"refused: {exc.strerror}"
    pids = None
    for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):  # cgroup v2, v1
        try:
            pids = open(path).read().strip()
            break
        except OSError:
            continue
    return {"cap_eff": status["CapEff"].strip(), "no_new_privs": status.get("NoNewPrivs", "").strip(),
            "tmp_exec": tmp_exec, "pids_max": pids}


def _memory_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        return None if text == "max" else int(text)
    return None


def _network() -> str:
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=3).close()
        return "reachable"
    except OSError as exc:
        return f"unreachable: {exc.strerror or exc}"


@hookimpl
def being_register_stages(registry):
    registry.add(Probe)
