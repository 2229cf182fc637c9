"""The ASGI app ``being serve`` runs: the web page, the avatar list, WebSocket sessions and WebRTC offers."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from .host import AvatarHost
from .session import Session, Settings
from .timeline import FrameJob, QueueFull
from .wire import FLAG_REPEAT, FLAG_SPEECH, Ready, Resampler, Start, decode_pcm, pack_frame

log = logging.getLogger("being.serve")
SAMPLES = 1000  # recent latencies and batches per process that /api/stats reports percentiles of


class Seats:
    """The sessions open now against ``--max-sessions``: one count per process, this one's at ``index``; ``shared``
    (a ``multiprocessing.Array``) holds those of all the worker processes of one server (``--workers``)."""

    def __init__(self, limit: int, shared: Any = None, index: int = 0):
        self.limit, self._index = limit, index
        self._counts = shared if shared is not None else [0]
        self._lock = shared.get_lock() if shared is not None else contextlib.nullcontext()

    def full(self) -> bool:
        return sum(self._counts[:]) >= self.limit

    def take(self) -> bool:
        """One seat, if one is free."""
        with self._lock:
            if sum(self._counts[:]) >= self.limit:
                return False
            self._counts[self._index] += 1
        return True

    def give(self) -> None:
        with self._lock:
            self._counts[self._index] -= 1

    def counts(self) -> list[int]:
        """The sessions open now in each process (live: the shared counter, not a published figure)."""
        with self._lock:
            return list(self._counts[:])


class Server:
    """The avatars, the settings and the sessions open now (all avatars together).

    With several worker processes (``being serve --workers N``), each runs one Server: ``seats`` is then shared by
    all of them, ``board`` carries every worker's figures for ``/api/stats``, and the seeds of worker ``i`` are
    ``i, i + N, ...`` (no two sessions of one server get the same blinks and head motion)."""

    def __init__(self, hosts: dict[str, AvatarHost], settings: Settings, token: str | None = None,
                 seats: Seats | None = None, board: Any = None, worker: int = 0, workers: int = 1):
        self.hosts, self.settings, self.token = hosts, settings, token
        self.seats = seats or Seats(settings.max_sessions)
        self.board, self.worker = board, worker
        self.sessions: set[Session] = set()
        self.seeds = itertools.count(worker, workers)
        self.encoder = ThreadPoolExecutor(max(2, (os.cpu_count() or 2)), thread_name_prefix="encode")

    def authorised(self, headers, query) -> bool:
        if not self.token:
            return True
        given = query.get("token") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def host(self, name: str | None) -> AvatarHost:
        """The avatar called ``name`` (None: the only one); ValueError naming those there are."""
        if name is None and len(self.hosts) == 1:
            return next(iter(self.hosts.values()))
        if name in self.hosts:
            return self.hosts[name]
        known = ", ".join(sorted(self.hosts))
        if name is None:
            raise ValueError(f"name the avatar (\"avatar\" in the start message): this server has {known}")
        raise ValueError(f"no avatar '{name}' here; this server has {known}")

    def full(self) -> bool:
        return self.seats.full()

    def full_text(self) -> str:
        return f"the server is full ({self.settings.max_sessions} sessions); try again later"

    def open_session(self, host: AvatarHost, on_frame, jpeg: int | None = None) -> Session:
        """A new session on ``host``; OverflowError when every seat is taken."""
        if not self.seats.take():
            raise OverflowError(self.full_text())
        try:
            session = Session(host, self.settings, next(self.seeds), on_frame, jpeg)
        except BaseException:
            self.seats.give()
            raise
        self.sessions.add(session)
        return session

    def end_session(self, session: Session, reason: str = "closed") -> None:
        session.close(reason)
        if session in self.sessions:
            self.sessions.discard(session)
            self.seats.give()

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": name, "fps": h.run.avatar.fps, "width": h.run.avatar.width, "height": h.run.avatar.height,
                 "encoder": h.run.encoder, "trainer": h.run.trainer, "refiner": h.run.refiner_name,
                 "device": h.run.avatar.device, "lookahead_ms": round(1000 * h.lookahead / 16000, 1)}
                for name, h in self.hosts.items()]

    def counts(self) -> dict[str, Any]:
        """This process's figures: counts, and the recent samples the percentiles are taken over (callable from
        any thread)."""
        sessions = list(self.sessions)
        return {"sessions": len(sessions), "frames": sum(s.stats.frames for s in sessions),
                "dropped": sum(s.stats.dropped for s in sessions),
                "latencies": [round(x * 1000, 1) for s in sessions for x in list(s.stats.latencies)[-SAMPLES:]][-SAMPLES:],
                "avatars": {name: {"batches": h.stats.batches, "frames": h.stats.frames, "pending": h.pending(),
                                   "batch_sizes": list(h.stats.batch_sizes)[-SAMPLES:],
                                   "render_ms": [round(x, 2) for x in list(h.stats.render_ms)[-SAMPLES:]]}
                            for name, h in self.hosts.items()}}

    def stats(self) -> dict[str, Any]:
        """``/api/stats``: of every worker process of this server."""
        own = self.counts()
        if self.board is None:
            parts, live = [own], [own["sessions"]]
            sessions = own["sessions"]
        else:  # every worker's that is up, in order (this one's fresh, the others' of the last second), with the
            # sessions open now from the shared counter
            board = self.board.read()
            up = [i for i, c in enumerate(board) if i == self.worker or c is not None]
            seats = self.seats.counts()
            parts, live = [own if i == self.worker else board[i] for i in up], [seats[i] for i in up]
            sessions = sum(seats)
        avatars = {}
        for name in self.hosts:
            mine = [p["avatars"][name] for p in parts if name in p.get("avatars", {})]
            sizes = [x for m in mine for x in m["batch_sizes"]]
            avatars[name] = {"batches": sum(m["batches"] for m in mine), "frames": sum(m["frames"] for m in mine),
                             "pending": sum(m["pending"] for m in mine),
                             "mean_batch": round(float(np.mean(sizes)), 2) if sizes else None,
                             "render_ms_p50": _pct([x for m in mine for x in m["render_ms"]], 50),
                             "render_ms_p95": _pct([x for m in mine for x in m["render_ms"]], 95)}
        latencies = [x for p in parts for x in p["latencies"]]
        return {"sessions": sessions, "workers": live,
                "avatars": avatars,
                "frames": sum(p["frames"] for p in parts), "dropped": sum(p["dropped"] for p in parts),
                "latency_ms_p50": _pct(latencies, 50), "latency_ms_p95": _pct(latencies, 95)}


def _pct(values, q) -> float | None:
    return round(float(np.percentile(list(values), q)), 2) if len(values) else None


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_app(server: Server) -> FastAPI:
    app = FastAPI(title="Being", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    static = resources.files("being_serve") / "static"

    def check(request: Request) -> None:
        if not server.authorised(request.headers, request.query_params):
            raise HTTPException(status_code=401, detail="this server needs its token (?token=... or "
                                                        "Authorization: Bearer ...)")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (static / "index.html").read_text()

    @app.get("/static/{name}")
    async def asset(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css"}
        entry = static / name
        suffix = os.path.splitext(name)[1]
        if "/" in name or suffix not in kinds or not entry.is_file():
            raise HTTPException(status_code=404)
        return Response(entry.read_text(), media_type=kinds[suffix])

    @app.get("/api/avatars")
    async def avatars(request: Request) -> JSONResponse:
        check(request)
        return JSONResponse(server.describe())

    @app.get("/api/stats")
    async def stats(request: Request) -> JSONResponse:
        check(request)
        return JSONResponse(server.stats())

    @app.post("/api/offer")
    async def offer(request: Request) -> JSONResponse:
        check(request)
        from .rtc import answer

        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(status_code=400, detail="the offer must be JSON: {sdp, type, avatar}") from None
        try:
            return JSONResponse(await answer(server, body))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except OverflowError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket_session(server, websocket)

    return app


async def _fatal(websocket: WebSocket, message: str, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "message": message, "fatal": True}))
        await websocket.close(code=code, reason=message[:120])


async def websocket_session(server: Server, websocket: WebSocket) -> None:
    await websocket.accept()
    if not server.authorised(websocket.headers, websocket.query_params):
        return await _fatal(websocket, "not authorised: this server needs its token (?token=... or "
                                       "Authorization: Bearer ...)", 1008)
    if server.full():
        return await _fatal(websocket, server.full_text(), 1013)
    try:
        first = await asyncio.wait_for(websocket.receive(), timeout=10)
    except TimeoutError:
        return await _fatal(websocket, "no start message within 10 s", 1002)
    if first.get("type") == "websocket.disconnect":
        return
    try:
        if first.get("text") is None:
            raise ValueError("the first message must be a text message {\"type\": \"start\", ...}")
        start = Start.model_validate_json(first["text"])
        host = server.host(start.avatar or websocket.query_params.get("avatar"))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
        return await _fatal(websocket, f"bad start message: {problems}", 1003)
    except ValueError as exc:
        return await _fatal(websocket, str(exc), 1003)
    out: asyncio.Queue[tuple[FrameJob, np.ndarray | bytes | None]] = asyncio.Queue(
        max(server.settings.out_frames, int(2 * server.settings.max_behind * host.run.avatar.fps)))

    def on_frame(job: FrameJob, frame: np.ndarray | bytes | None) -> None:
        if out.full():  # a client that does not keep up loses its oldest frames, never the server's time
            out.get_nowait()
            session.stats.dropped += 1
        out.put_nowait((job, frame))

    try:
        session = server.open_session(host, on_frame, start.quality)
    except OverflowError as exc:
        return await _fatal(websocket, str(exc), 1013)
    avatar = host.run.avatar
    await websocket.send_text(Ready(avatar=host.name, fps=avatar.fps, width=avatar.width, height=avatar.height,
                                    lookahead_ms=round(session.lookahead_ms, 1)).model_dump_json())
    loop = asyncio.get_running_loop()
    resample = Resampler(start.sample_rate)

    async def send_frames() -> None:
        while True:
            job, frame = await out.get()
            flags = FLAG_SPEECH if job.speech else 0
            if isinstance(frame, bytes):  # encoded on the GPU
                jpeg = frame
            elif frame is not None:
                jpeg = await loop.run_in_executor(server.encoder, encode_jpeg, frame, start.quality)
            else:
                jpeg, flags = b"", flags | FLAG_REPEAT
            try:
                await asyncio.wait_for(websocket.send_bytes(pack_frame(job.index, flags, jpeg, job.audio)),
                                       server.settings.send_timeout)
            except TimeoutError:
                session.close(f"the client took no frame for {server.settings.send_timeout:g} s", 1008)
                return

    async def receive() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                session.close("the client left")
                return
            if message.get("bytes") is not None:
                try:
                    samples = resample(decode_pcm(message["bytes"], start))
                    session.feed(samples)
                except QueueFull as exc:
                    await websocket.send_text(json.dumps({"type": "error", "message": str(exc), "fatal": False}))
                except ValueError as exc:
                    session.close(f"bad audio message: {exc}", 1007)
                    return
                continue
            try:
                control = json.loads(message.get("text") or "")
                kind = control.get("type") if isinstance(control, dict) else None
            except ValueError:
                kind = None
            if kind == "interrupt":
                dropped = session.interrupt()
                await websocket.send_text(json.dumps({"type": "interrupted", "dropped_ms": dropped / 16}))
            elif kind == "ping":
                session.touch()
            else:
                session.close(f"unknown control message {(message.get('text') or '')[:80]!r}; expected "
                              "{\"type\": \"interrupt\"} or {\"type\": \"ping\"}", 1003)
                return

    tasks = [asyncio.create_task(send_frames()), asyncio.create_task(receive()),
             asyncio.create_task(session.ended.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.end_session(session)
    reason = session.reason or "closed"
    if reason != "the client left":
        if session.failed:
            await _fatal(websocket, reason, session.code)
        else:
            with contextlib.suppress(Exception):
                await websocket.send_text(json.dumps({"type": "closed", "message": reason}))
                await websocket.close(code=1000, reason=reason[:120])
