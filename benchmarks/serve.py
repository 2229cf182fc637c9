"""Live serving under load: latency and sessions per GPU (run by hand).

    python -m benchmarks.serve RUN OUT [--levels 1,4,8,16,24,32] [--seconds 12] [--speech WAV]

Starts ``being serve RUN`` (a real server, in its own process) and, for each level ``N``, opens ``N`` WebSocket
sessions at once, each speaking in turns as a voice agent does (1 s of speech sent in real time in 20 ms chunks,
then 1 s of nothing, for ``--seconds``). It measures, per level:

- end-to-end latency: from sending the first chunk of a turn to receiving the first frame that lip-syncs it (the
  first frame flagged as speech after a pause), p50 and p95 over all turns of all sessions; the server's
  algorithmic look-ahead (``lookahead_ms``) is part of it and reported beside it;
- the clients run ``--per-client`` sessions per process (spawned), so that they are not the limit; their CPU use
  is reported beside the server's;
- the server's render batches (frames per batch, milliseconds per batch, p50/p95): the compute part;
- frames per second each session received after the first second, and dropped frames (repeats and gaps);
- the clock: how much later each frame arrives than its time on the audio clock; ``clock_drift_ms`` is the trend
  of that over the session (a least-squares line through it, times the session's length; the largest of any
  session), ``lateness_ms_per_minute`` its medians per minute for the first session (``--seconds 600`` for the
  10-minute figure);
- GPU utilisation (nvidia-smi, sampled every 0.5 s) and the CPU use (cores) of the server's processes (with
  ``--serve-options='--workers N'``, all of them).

Writes ``OUT/serve.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

TURN_S, CHUNK_S = 1.0, 0.02


def speech_samples(wav: Path | None, seconds: float) -> np.ndarray:
    """16 kHz int16 speech (a real recording when given, else a voiced sweep with an envelope)."""
    if wav is not None:
        from being_core.ingest import ffmpeg_exe

        raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(wav), "-t", str(seconds), "-ac", "1",
                              "-ar", "16000", "-f", "s16le", "-"], check=True, capture_output=True).stdout
        return np.frombuffer(raw, "<i2")
    t = np.arange(int(seconds * 16000)) / 16000
    voice = np.sin(2 * np.pi * (120 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (voice * 12000).astype("<i2")


async def one_session(url: str, speech: np.ndarray, seconds: float, out: dict) -> None:
    from being_serve.client import Client

    step = int(16000 * CHUNK_S)
    turns: list[float] = []
    frames: list[tuple[int, int, float]] = []
    async with Client(url, 16000) as client:
        assert client.ready is not None
        out["lookahead_ms"] = client.ready.lookahead_ms

        async def send() -> None:
            t0 = time.monotonic()
            k, at = 0, 0
            while time.monotonic() - t0 < seconds:
                turn_start = time.monotonic()
                turns.append(turn_start)
                for i in range(int(TURN_S / CHUNK_S)):
                    piece = speech[at % len(speech):][:step]
                    at += step
                    await client.send(piece)
                    k += 1
                    await asyncio.sleep(max(0.0, turn_start + (i + 1) * CHUNK_S - time.monotonic()))
                await client.control("ping")
                await asyncio.sleep(TURN_S)

        sender = asyncio.create_task(send())
        try:
            while not sender.done():
                f = await client.next_frame()
                frames.append((f.index, (1 if f.speech else 0) | (2 if f.jpeg is None else 0), f.received))
        finally:
            sender.cancel()
    # a turn's latency: to the first frame that starts speech (after a frame without) arriving after the turn began
    before = [(0, 0, 0.0), *frames]  # the session starts silent
    starts = [f[2] for prev, f in zip(before, frames, strict=False) if f[1] & 1 and not prev[1] & 1]
    latencies, k = [], 0
    for began in turns:
        while k < len(starts) and starts[k] < began:
            k += 1
        if k < len(starts):
            latencies.append(starts[k] - began)
            k += 1
    index = [f[0] for f in frames]
    after = [f for f in frames if f[2] - frames[0][2] >= 1.0] if frames else []
    # the clock: how much later than its time on the audio clock (index / fps) each frame arrives, after the first
    # second; the trend of that over the session (a least-squares line, times the session's length) is how far the
    # video fell behind its audio clock, or ran ahead of it; its medians per minute show the shape
    assert client.ready is not None
    fps = client.ready.fps
    if len(after) >= 10 * fps:
        t = np.array([f[2] - after[0][2] for f in after])
        late = t - np.array([(f[0] - after[0][0]) / fps for f in after])
        out["clock_drift_ms"] = 1000 * float(np.polyfit(t, late, 1)[0] * t[-1])
        out["lateness_ms_per_minute"] = [round(1000 * float(np.median(late[(t >= m) & (t < m + 60)])), 1)
                                         for m in range(0, int(t[-1]) - 59, 60)]
    span = (after[-1][2] - after[0][2]) if len(after) > 1 else 0.0
    out.update(latencies=latencies, frames=len(frames), repeats=sum(1 for f in frames if f[1] & 2),
               gaps=int((index[-1] - index[0] + 1) - len(index)) if index else 0,
               fps=(len(after) - 1) / span if span else 0.0)


def gpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    smi = shutil.which("nvidia-smi")
    while smi and not stop.is_set():
        try:
            text = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
            samples.append(float(text.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            pass
        stop.wait(0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it (the server's worker processes)."""
    from being_serve.workers import process_tree

    total = 0.0
    for p in process_tree(pid):
        try:
            total += cpu_seconds(p)
        except (OSError, IndexError):
            pass
    return total


def client_process(url: str, n: int, speech: np.ndarray, seconds: float, results) -> None:
    """``n`` sessions in one client process (asyncio); their results and the process's CPU seconds on ``results``."""
    outs = [dict() for _ in range(n)]
    cpu = time.process_time()

    async def run_all() -> None:
        await asyncio.gather(*[one_session(url, speech, seconds, o) for o in outs])

    asyncio.run(run_all())
    results.put((outs, time.process_time() - cpu))


def level(base: str, n: int, speech: np.ndarray, seconds: float, pid: int, per_client: int) -> dict:
    """``n`` sessions at once, ``per_client`` of them per client process (so that the clients' own Python is not
    what limits the figures)."""
    import multiprocessing

    url = base.replace("http", "ws") + "/ws"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    shares = [min(per_client, n - i) for i in range(0, n, per_client)]
    stop, gpu = threading.Event(), []
    sampler = threading.Thread(target=gpu_sampler, args=(stop, gpu), daemon=True)
    sampler.start()
    cpu0, wall0 = tree_cpu_seconds(pid), time.monotonic()
    clients = [context.Process(target=client_process, args=(url, k, speech, seconds, results)) for k in shares]
    for c in clients:
        c.start()
    time.sleep(seconds * 0.8)
    stats = json.loads(urllib.request.urlopen(f"{base}/api/stats").read())
    gathered = [results.get(timeout=seconds + 120) for _ in clients]
    for c in clients:
        c.join()
    cpu = (tree_cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    stop.set()
    outs = [o for part, _ in gathered for o in part]
    client_cpu = sum(c for _, c in gathered) / (time.monotonic() - wall0)
    lat = [x for o in outs for x in o["latencies"]]
    avatar = next(iter(stats["avatars"].values()))
    return {"sessions": n, "client_processes": len(shares), "lookahead_ms": outs[0]["lookahead_ms"],
            "latency_ms_p50": round(1000 * float(np.percentile(lat, 50)), 1) if lat else None,
            "latency_ms_p95": round(1000 * float(np.percentile(lat, 95)), 1) if lat else None,
            "turns": len(lat), "fps_min": round(min(o["fps"] for o in outs), 2),
            "fps_mean": round(float(np.mean([o["fps"] for o in outs])), 2),
            "dropped": sum(o["repeats"] + o["gaps"] for o in outs), "frames": sum(o["frames"] for o in outs),
            "batch_mean": avatar["mean_batch"], "render_ms_p50": avatar["render_ms_p50"],
            "render_ms_p95": avatar["render_ms_p95"], "server_latency_ms_p95": stats["latency_ms_p95"],
            "gpu_util_mean": round(float(np.mean(gpu)), 1) if gpu else None, "server_cpu_cores": round(cpu, 2),
            "client_cpu_cores": round(client_cpu, 2),
            "clock_drift_ms": max((o["clock_drift_ms"] for o in outs if "clock_drift_ms" in o), default=None,
                                  key=abs),
            "lateness_ms_per_minute": outs[0].get("lateness_ms_per_minute")}


def render_only(run: Path, device: str | None) -> list[dict]:
    """The avatar's render alone, in this process: milliseconds per batch of B frames (the GPU's share)."""
    from being_core.live import open_run
    from being_core.plugins import load_registry

    return time_batches(open_run(run, load_registry(), device))


def time_batches(live, refine: bool = True, batches=(1, 4, 8, 16, 32, 64)) -> list[dict]:
    """Milliseconds per batch of B frames of the live render path of ``live`` (an opened run): the deformation
    and the rasterisation, then the run's refiner when it has one and ``refine``, then the frames as bytes on the
    host (which waits for the device); the median of 10 batches after 2 of warm-up."""
    stream = live.stream()
    windows = stream.push(np.zeros(16000 * 3, np.float32))
    sessions = [live.avatar.session(i) for i in range(max(batches))]
    rows = []
    for b in batches:
        times = []
        for rep in range(12):
            steps = [sessions[i].step() for i in range(b)]
            t = time.perf_counter()
            rgb, alpha = live.avatar.render(steps, windows[np.arange(b) % len(windows)], np.zeros(b, np.float32))
            if refine and live.refiner is not None:
                rgb = live.refiner(rgb, alpha)
            (rgb.clamp(0, 1) * 255).round().byte().cpu()
            if rep >= 2:
                times.append(time.perf_counter() - t)
        ms = 1000 * float(np.median(times))
        rows.append({"batch": b, "ms": round(ms, 2), "frames_per_s": round(1000 * b / ms, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--levels", default="1,4,8,16,24,32")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--speech", type=Path)
    ap.add_argument("--device")
    ap.add_argument("--profile", action="store_true", help="run the server under cProfile (its event loop's "
                    "thread) and print where its time goes")
    ap.add_argument("--serve-options", default="", help="more options for being serve, e.g. '--switch-ms 5'")
    ap.add_argument("--per-client", type=int, default=4, help="sessions per client process (default 4)")
    ap.add_argument("--render-only", action="store_true", help="time the avatar's batched render alone first")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        (args.out / "render.json").write_text(json.dumps(render_only(args.run, args.device), indent=2))
    levels = [int(x) for x in args.levels.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prof = args.out / "server.prof"
    profiler = ["-m", "cProfile", "-o", str(prof)] if args.profile else []
    cmd = [sys.executable, *profiler, "-m", "being_core", "-q", "serve", str(args.run), "--port", str(port),
           "--max-sessions", str(max(levels) + 4), "--max-batch", str(max(32, max(levels))),
           *args.serve_options.split()]
    if args.device:
        cmd += ["--device", args.device]
    log = open(args.out / "server.log", "w")  # noqa: SIM115 (open for the server's whole life)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/api/avatars", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"being serve exited; see {args.out / 'server.log'}")
                time.sleep(0.5)
        speech = speech_samples(args.speech, 30.0)
        results = []
        for n in levels:
            results.append(level(base, n, speech, args.seconds, server.pid, args.per_client))
            print(json.dumps(results[-1]), flush=True)
            time.sleep(1.0)
    finally:
        server.send_signal(2)  # Ctrl+C: a clean exit writes the profile
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.profile and prof.is_file():
        import pstats

        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    print("| sessions | latency p50 / p95 (ms) | look-ahead (ms) | render batch (frames, p50 / p95 ms) | fps min / mean "
          "| dropped | GPU % | server CPU (cores) | client CPU (cores) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['sessions']} | {r['latency_ms_p50']} / {r['latency_ms_p95']} | {r['lookahead_ms']} | "
              f"{r['batch_mean']}, {r['render_ms_p50']} / {r['render_ms_p95']} | {r['fps_min']} / {r['fps_mean']} | "
              f"{r['dropped']} of {r['frames']} | {r['gpu_util_mean']} | {r['server_cpu_cores']} | "
              f"{r['client_cpu_cores']} |")


if __name__ == "__main__":
    main()
