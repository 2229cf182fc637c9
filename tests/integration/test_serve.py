"""Live serving (``being serve``): streamed features, the session clock, a real server, a real browser."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from being_audio_mel import MelEncoder
from being_serve.client import Client, ServerError, speak
from being_serve.timeline import Timeline
from being_serve.workers import process_tree
from being_trainer_gaussian_avatar import GaussianAvatar

from being_core.audio import SAMPLE_RATE, frame_edges, read_wav
from being_core.config import resolve
from being_core.errors import InputError
from being_core.ingest import ffmpeg_exe
from being_core.live import open_run
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry
from being_core.stage import StageKind

REGISTRY = load_registry()
ENCODERS = [i.cls for i in REGISTRY.all() if i.cls.kind == StageKind.AUDIO_ENCODER]


@pytest.fixture(scope="module")
def speech(being_testdata) -> np.ndarray:
    return read_wav_any(being_testdata / "audio" / "videoretalking_audio1.wav")


def read_wav_any(path: Path, rate: int = SAMPLE_RATE, seconds: float = 8.0) -> np.ndarray:
    """``seconds`` of any audio file as float32 mono at ``rate``."""
    raw = subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-t", str(seconds), "-ac", "1", "-ar",
                          str(rate), "-f", "s16le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


@pytest.mark.parametrize("cls", [c for c in ENCODERS if c.can_stream()], ids=lambda c: c.name)
def test_streamed_features_equal_offline(cls, prepared_copy, being_run_stage, tmp_path):
    """Every encoder that streams gives the windows its offline run writes for the same audio, pushed in
    chunks of any size, except the last frames (offline knows where the audio ends)."""
    from being_core.live import _context
    from being_core.manifest import Manifest
    from being_core.progress import Reporter

    config = cls.contract_config(tmp_path)
    entry = being_run_stage(prepared_copy, "audio_encoder", cls.name, config, force=True)
    offline = np.load(prepared_copy / entry["info"]["file"])
    typed = cls.Config.model_validate(config)
    stream = cls().stream(_context(prepared_copy, Manifest.load(prepared_copy), cls, typed, Reporter()))
    audio = read_wav(prepared_copy / "aud.wav")
    rng = np.random.default_rng(0)
    got, at = [], 0
    while at < len(audio):
        n = int(rng.integers(1, 4000))
        got.append(stream.push(audio[at:at + n]))
        at += n
    streamed = np.concatenate(got)
    assert stream.lookahead > 0
    k = len(offline) - (stream.lookahead // 640 + 3)  # the frames whose look-ahead runs past the audio's end
    assert len(streamed) >= k
    if cls.stream_exact:
        np.testing.assert_allclose(streamed[:k], offline[:k], atol=1e-4)
    else:  # close: a live stream cannot wait for all the context the offline model sees
        a, b = streamed[:k].ravel(), offline[:k].ravel()
        assert np.corrcoef(a, b)[0, 1] >= 0.99
        assert np.abs(a - b).mean() <= 0.05 * b.std()


def test_a_run_that_cannot_go_live_is_named(trained, tmp_path):
    """A run made with an encoder version other than the installed one is refused before it is served."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    data = json.loads((run / "being.json").read_text())
    data["stages"]["audio_encoder"]["version"] = "0.0.1"
    (run / "being.json").write_text(json.dumps(data))
    installed = re.escape(MelEncoder.version)
    with pytest.raises(InputError, match=rf"was made with audio_encoder 'mel' 0\.0\.1, but {installed} is installed"):
        open_run(run, REGISTRY)


def test_an_avatar_trained_with_audio_smoothing_goes_live_with_it(trained, speech, tmp_path):
    """``audio_smooth: 2`` averages each frame's window with 2 frames either side: live, its windows are those of
    the encoder's stream smoothed the same way, 2 frames (80 ms) later."""
    from being_trainer_gaussian_avatar.data import smooth_audio

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    model = torch.load(run / "avatar" / "model.pt", weights_only=True)
    model["config"]["audio_smooth"] = 2  # as if trained so (it changes the training data, not the model's shape)
    torch.save(model, run / "avatar" / "model.pt")
    plain, smoothed = open_run(trained, REGISTRY, "cpu"), open_run(run, REGISTRY, "cpu")
    assert smoothed.lookahead == plain.lookahead + 2 * SAMPLE_RATE // 25
    a, b = plain.stream(), smoothed.stream()
    raw = np.concatenate([a.push(speech[i:i + 1000]) for i in range(0, 4 * SAMPLE_RATE, 1000)])
    out = np.concatenate([b.push(speech[i:i + 1000]) for i in range(0, 4 * SAMPLE_RATE, 1000)])
    assert len(out) == len(raw) - 2
    assert np.allclose(out, smooth_audio(torch.from_numpy(raw), 2)[:-2].numpy(), atol=1e-5)
    session = smoothed.avatar.session(0)
    rgb, alpha = smoothed.avatar.render([session.step(0.0)], out[:1], np.zeros(1, np.float32))
    assert rgb.shape == (1, 64, 64, 3) and float(alpha.max()) > 0


def test_live_pauses_take_the_shut_frames_inputs_as_the_silence_setting_says(trained, tmp_path):
    """Live, a quiet frame takes the shut training frame's audio window; with ``silence: close`` its head pose
    input too, with ``close-audio`` the pose of where the session is, with ``close-mouth`` that pose for the
    head and the shut one around the mouth (as ``being render`` does)."""
    given = {}
    for name in ("close", "close-audio", "close-mouth"):
        run = tmp_path / name
        shutil.copytree(trained, run)
        data = json.loads((run / "being.json").read_text())
        data["stages"]["trainer"]["config"]["silence"] = name
        (run / "being.json").write_text(json.dumps(data))
        live = open_run(run, REGISTRY, "cpu")
        assert live.avatar.cfg.silence == name and live.avatar.reference is not None
        av, ref = live.avatar.av, live.avatar.reference
        seen: list[dict] = []
        real = av.render
        av.render = lambda *a, _seen=seen, _real=real, **k: _seen.append(k) or _real(*a, **k)
        step = live.avatar.session(0).step(0.0)
        window = live.avatar.data.audio[:1].numpy() + 1.0  # not the shut frame's window
        for quiet in (0.0, 1.0):
            live.avatar.render([step], window, np.full(1, quiet, np.float32))
        speaking, pause = seen
        assert torch.allclose(pause["audio"], live.avatar.data.audio[ref][None])
        assert torch.allclose(speaking["audio"], torch.from_numpy(window)) and "mouth" not in speaking
        given[name] = speaking["camera"], pause["camera"], pause.get("mouth"), live.avatar.data.camera[ref][None]
    own, shut, mouth, reference = given["close"]
    assert torch.allclose(shut, reference) and not torch.allclose(own, reference) and mouth is None
    own, shut, mouth, _ = given["close-audio"]
    assert torch.equal(shut, own) and mouth is None
    own, shut, mouth, reference = given["close-mouth"]
    assert torch.equal(shut, own) and torch.allclose(mouth[0], reference)
    assert mouth[1].max() == 1 and mouth[1].min() == 0  # around the mouth, and not the rest


def test_an_idle_head_drifts_slowly_and_speech_speeds_it_up(trained):
    """A live session moves through the training poses at full speed while speaking, at half speed while quiet,
    between poses interpolated; a pose it lands on exactly renders as that training frame's own pose."""
    live = open_run(trained, REGISTRY, "cpu")
    session = live.avatar.session(3)
    start = session.cursor
    for _ in range(10):
        session.step(1.0)
    idle = session.cursor - start
    for _ in range(10):
        session.step(0.0)
    assert idle == pytest.approx(5.0) and session.cursor - start == pytest.approx(15.0)
    steps = [session.step(1.0) for _ in range(3)]
    assert [s[2] for s in steps] == pytest.approx([0.0, 0.5, 0.0])
    windows = live.stream().push(np.zeros(SAMPLE_RATE, np.float32))[:3]
    rgb, alpha = live.avatar.render(steps, windows, np.ones(3, np.float32))
    assert rgb.shape == (3, 64, 64, 3) and alpha.shape == (3, 64, 64)
    between = rgb[1]
    assert float((between - rgb[0]).abs().mean()) > 0 and float((between - rgb[2]).abs().mean()) > 0


class Ones:
    """A feature stream that windows nothing but counts: one [1, 1] window per frame, after 0 look-ahead."""

    lookahead = 0

    def __init__(self) -> None:
        self.samples = 0
        self.frames = 0

    def push(self, samples):
        self.samples += len(samples)
        n = 0
        while int(frame_edges(self.frames + 1, 25.0)) <= self.samples:
            self.frames += 1
            n += 1
        return np.ones((n, 1, 1), np.float32)


def test_ten_minutes_keep_the_audio_clock(speech):
    """After 10 minutes of speech with pauses, every frame holds exactly its samples of what was said, on the
    audio clock (frame k at k / fps): no drift, and the speech comes back sample for sample."""
    tl = Timeline(Ones(), 25.0)
    said = []
    jobs = []
    clock = 0
    rng = np.random.default_rng(1)
    while clock < 600 * SAMPLE_RATE:
        step = int(rng.integers(160, 1600))
        clock += step
        if (clock // (7 * SAMPLE_RATE)) % 2 == 0:  # speech for 7 s, then 7 s of nothing
            piece = speech[(clock - step) % len(speech):][:step]
            tl.add(piece)
            said.append(piece)
        jobs.extend(tl.advance(clock))
    assert [j.index for j in jobs] == list(range(len(jobs)))
    assert abs(len(jobs) - clock / SAMPLE_RATE * 25) < 10  # frames keep up with the wall clock
    audio = np.concatenate([j.audio for j in jobs]).astype(np.float32) / 32767
    assert len(audio) == int(frame_edges(len(jobs), 25.0))
    speech_frames = [j for j in jobs if j.speech]
    assert 0.4 < len(speech_frames) / len(jobs) < 0.6
    spoken = np.concatenate(said)
    heard = np.concatenate([j.audio for j in jobs if j.speech]).astype(np.float32) / 32767
    start = np.flatnonzero(np.abs(heard) > 0)[0]
    assert np.abs(heard[start:start + 16000] - spoken[start:start + 16000]).max() < 1e-3
    quiet = np.array([j.quiet for j in jobs])
    speaking = np.array([j.speech for j in jobs])
    assert quiet[~speaking].mean() > 0.95  # no speech: the mouth closes


def test_interrupt_drops_the_queued_speech(speech):
    tl = Timeline(Ones(), 25.0, ahead=0.3)
    tl.add(speech[:5 * SAMPLE_RATE])
    tl.advance(0)
    assert tl.interrupt() == 5 * SAMPLE_RATE - int(0.3 * SAMPLE_RATE)
    jobs = tl.advance(2 * SAMPLE_RATE)
    speech_frames = sum(j.speech for j in jobs)
    assert speech_frames <= 0.3 * 25 + 1  # what was already on the timeline plays, nothing more


def test_a_render_of_a_run_made_with_another_encoder_version_is_refused(trained, tmp_path, being_testdata):
    """being render checks what going live checks: new audio through a changed encoder would not be what the
    avatar was trained on (e.g. windows placed differently)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    data = json.loads((run / "being.json").read_text())
    data["stages"]["audio_encoder"]["version"] = "0.0.1"
    (run / "being.json").write_text(json.dumps(data))
    out = tmp_path / "says.mp4"
    proc = subprocess.run([sys.executable, "-m", "being_core", "render", str(run), "--audio",
                           str(being_testdata / "audio" / "videoretalking_audio1.wav"), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert (f"{run.resolve()} was made with audio_encoder 'mel' 0.0.1, but {MelEncoder.version} is installed; retrain "
            f"it (`being train {run.resolve()}`) or install that version") in " ".join((proc.stdout + proc.stderr).split())
    assert not out.exists() and not (run / "renders").exists()


# --- a real server --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(prepared_face5, tmp_path_factory):
    """The tiny trainer on face5 (64 px: a few frames per second more than real time needs on 2 cores)."""
    root = tmp_path_factory.mktemp("serve") / "face5"
    shutil.copytree(prepared_face5, root)
    config = resolve({"stages": {"audio_encoder": {"impl": "mel"},
                                 "trainer": {"impl": "gaussian-avatar", "config": GaussianAvatar.test_config}}},
                     REGISTRY, "test config")
    Pipeline(root, config, REGISTRY).train()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[Path], *options: str, env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "being_core", "-q", "serve", *map(str, runs), "--port", str(port),
                             *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"being serve exited: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(f"{base}/", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("being serve did not start")


@pytest.fixture(scope="module")
def server(trained):
    proc, base = start_server([trained], "--max-sessions", "6", "--idle-timeout", "3")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def ws_url(base: str) -> str:
    return base.replace("http", "ws") + "/ws"


def test_a_session_lip_syncs_speech_on_the_audio_clock(server, being_testdata, tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(being_testdata / "audio" / "videoretalking_audio1.wav"),
                    "-t", "3", "-ac", "2", "-ar", "44100", str(wav)], check=True)
    ready, frames = asyncio.run(speak(ws_url(server), wav, tail=1.0))
    assert ready.width == ready.height == 64 and ready.fps == 25 and ready.lookahead_ms >= 116
    index = [f.index for f in frames]
    assert index == sorted(set(index)) and index[0] < 25, "frames in order from the start"
    assert len(frames) >= 3 * 25
    speaking = [f for f in frames if f.speech]
    assert 2.0 * 25 <= len(speaking) <= 3.3 * 25
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(f.jpeg))) for f in frames if f.jpeg]
    assert images and images[0].shape == (64, 64, 3)
    assert len(images) >= 5, "rendered frames, not only repeats (how many is the benchmark's business)"
    assert np.abs(images[0].astype(int) - images[-1].astype(int)).mean() > 0.5, "the avatar moves"
    assert all(len(f.audio) == 640 for f in frames), "each frame carries exactly its audio (40 ms at 16 kHz)"
    assert not any(np.any(f.audio) for f in frames if not f.speech), "idle frames come with silence"
    audio = np.concatenate([f.audio for f in frames])
    assert np.abs(audio).max() > 1000, "the speech comes back with the frames"
    stats = json.loads(urllib.request.urlopen(f"{server}/api/stats").read())
    assert stats["avatars"]["face5"]["frames"] > 0


def test_a_webrtc_client_says_a_wav_and_gets_the_avatar_back(server, being_testdata, tmp_path):
    """aiortc's peer, as a program would use it (being_serve.rtc_client): the wav goes out on an audio track in real
    time; the avatar's video comes back at 25 fps on the audio clock (90 kHz timestamps, one frame every 3,600),
    moving, with the audio it lip-syncs on the other track."""
    from being_serve.rtc_client import rtc_speak, write_answer

    wav = tmp_path / "speech.wav"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(being_testdata / "audio" / "videoretalking_audio1.wav"),
                    "-t", "3", "-ac", "1", "-ar", "48000", str(wav)], check=True)
    answer = asyncio.run(rtc_speak(server, wav, "face5", tail=1.0))
    frames = answer.frames
    assert frames and frames[0].image.shape == (64, 64, 3)
    steps = np.diff([f.pts for f in frames])
    assert (steps > 0).all() and (steps % 3600 == 0).all(), "timestamps on the audio clock, in order"
    span = (frames[-1].pts - frames[0].pts) / 90000
    assert 3.5 <= span <= 5.5 and len(frames) >= 0.5 * 25 * span, ("frames for as long as it spoke, at 25 fps", span,
                                                                   len(frames), len(answer.audio) / answer.audio_rate)
    assert np.abs(frames[0].image.astype(int) - frames[-1].image.astype(int)).mean() > 0.5, "the avatar moves"
    heard = len(answer.audio) / answer.audio_rate
    assert abs(heard - span) < 0.6, f"{heard:.2f} s of audio against {span:.2f} s of video"
    assert np.abs(answer.audio).max() > 1000, "the speech comes back with the frames"
    out = tmp_path / "answer.mp4"
    write_answer(answer, 25.0, out)
    assert out.stat().st_size > 1000


def test_two_sessions_on_two_avatars_at_once(trained, speech, tmp_path):
    """One server, two avatars (the second is the first with its colours inverted), one session on each at the
    same time: each session gets its own avatar's frames, in order, as long as it spoke."""
    other = tmp_path / "inverted"
    shutil.copytree(trained, other)
    model = torch.load(other / "avatar" / "model.pt", weights_only=True)
    model["model"]["gaussians"]["colour_logits"] = -model["model"]["gaussians"]["colour_logits"]
    torch.save(model, other / "avatar" / "model.pt")
    proc, base = start_server([trained, other])
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((speech[:2 * SAMPLE_RATE] * 32767).astype("<i2").tobytes())

    async def both():  # each says the 2 s in real time, then collects frames until 1 s after
        return await asyncio.gather(*(speak(ws_url(base), wav, avatar) for avatar in ("face5", "inverted")))

    try:
        (ready_a, a), (ready_b, b) = asyncio.run(both())
        stats = json.loads(urllib.request.urlopen(f"{base}/api/stats").read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (ready_a.avatar, ready_b.avatar) == ("face5", "inverted")
    for frames in (a, b):  # (a machine too busy to send every frame drops the oldest waiting: gaps, not disorder)
        index = [f.index for f in frames]
        assert index == sorted(set(index)) and len(frames) >= 0.5 * 3 * 25, index
        assert 0.5 * 2 * 25 <= sum(f.speech for f in frames) <= 2.3 * 25
    from PIL import Image

    last_a = np.asarray(Image.open(io.BytesIO(next(f.jpeg for f in reversed(a) if f.jpeg))), np.float32)
    last_b = np.asarray(Image.open(io.BytesIO(next(f.jpeg for f in reversed(b) if f.jpeg))), np.float32)
    assert np.abs(last_a - last_b).mean() > 5, "each session sees its own avatar"
    assert stats["avatars"]["face5"]["frames"] > 0 and stats["avatars"]["inverted"]["frames"] > 0


async def _error_of(url: str, start: dict | None, payload: bytes | str | None = None) -> tuple[int, str]:
    """The close code and the error message the server answers with."""
    import websockets

    async with websockets.connect(url, max_size=2**24) as ws:
        if start is not None:
            with contextlib.suppress(websockets.ConnectionClosed):  # a server that refuses at once may have closed
                await ws.send(json.dumps(start))
        if payload is not None:
            first = json.loads(await ws.recv())
            assert first["type"] == "ready", first
            await ws.send(payload)
        message = ""
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 15)
                if isinstance(m, str) and json.loads(m)["type"] in ("error", "closed"):
                    message = json.loads(m)["message"]
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 1006, message


START = {"type": "start", "sample_rate": 16000, "format": "s16le", "channels": 1}


@pytest.mark.parametrize(("start", "payload", "code", "text"), [
    ({"type": "start", "sample_rate": 100}, None, 1003, "bad start message: sample_rate: Input should be greater "
                                                       "than or equal to 8000"),
    ({"type": "start", "sample_rate": 16000, "avatar": "nobody"}, None, 1003, "no avatar 'nobody' here; this "
                                                                              "server has face5"),
    (START, b"\x01\x02\x03", 1007, "bad audio message: an audio message of 3 bytes is not a whole number of s16le "
                                   "samples of 1 channel(s) (2 bytes each)"),
    ({**START, "format": "f32le"}, np.full(100, np.nan, "<f4").tobytes(), 1007,
     "bad audio message: the audio holds NaN or infinite samples"),
    (START, "garbage", 1003, "unknown control message 'garbage'"),
    (START, b"\x00" * (1 << 20), 1009, ""),
])
def test_bad_input_gets_a_clear_error_and_others_go_on(server, start, payload, code, text):
    async def both():
        bad = asyncio.create_task(_error_of(ws_url(server), start, payload))
        async with Client(ws_url(server), 16000) as good:
            await good.send(np.zeros(1600, "<i2"))
            first = await good.next_frame()
            got = await bad
            later = await good.next_frame()
            return got, first, later

    (got_code, message), first, later = asyncio.run(both())
    assert got_code == code
    assert message.startswith(text)
    assert later.index > first.index, "the other session kept going"


def test_garbage_first_message_and_an_idle_session(server):
    code, message = asyncio.run(_garbage(ws_url(server)))
    assert code == 1003 and message == "the first message must be a text message {\"type\": \"start\", ...}"

    async def idle():
        async with Client(ws_url(server), 16000) as c:
            try:
                while True:
                    await c.next_frame()
            except Exception:  # noqa: BLE001 (the server closed it)
                return c.events

    events = asyncio.run(idle())
    assert events[-1] == {"type": "closed", "message": "closed: nothing came from the client for 3 s"}


def test_a_session_saying_its_speech_is_not_idle(server, speech):
    """5 s of speech sent at once, then nothing: the avatar says all of it (the 3 s idle timeout counts from the
    end of the speech, not from the last message), and only then is the session closed as idle."""
    async def burst():
        frames = []
        async with Client(ws_url(server), 16000) as c:
            await c.send((speech[:5 * SAMPLE_RATE] * 32767).astype("<i2"))
            with contextlib.suppress(Exception):  # the server closes it in the end
                while True:
                    frames.append(await c.next_frame())
            return frames, c.events, time.monotonic()

    frames, events, closed = asyncio.run(burst())
    assert events[-1] == {"type": "closed", "message": "closed: nothing came from the client for 3 s"}
    spoken = [f for f in frames if f.speech]
    assert abs(len(spoken) - 5 * 25) <= 1, "all the speech was said"
    # then the idle timeout ran, timed by the clock: a slow server may send fewer than 25 idle frames a second
    assert closed - spoken[-1].received >= 2.5, "then the idle timeout ran"


def test_an_interrupt_over_the_websocket_stops_the_speech_at_once(server, speech):
    """5 s of speech sent at once, an interrupt 1 s later: the server says how much it dropped, and the avatar
    says only what was on the timeline by then (at most 0.3 s past the clock), then idles."""
    async def interrupted():
        frames = []
        async with Client(ws_url(server), 16000) as c:
            await c.send((speech[:5 * SAMPLE_RATE] * 32767).astype("<i2"))
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                frames.append(await c.next_frame())
            await c.control("interrupt")
            while time.monotonic() - began < 3.0:
                frames.append(await c.next_frame())
            return frames, c.events

    frames, events = asyncio.run(interrupted())
    said = [e for e in events if e["type"] == "interrupted"]
    assert len(said) == 1 and 3000 <= said[0]["dropped_ms"] <= 4700, events
    spoken = sum(f.speech for f in frames)
    assert spoken <= (5000 - said[0]["dropped_ms"]) / 40 + 1, "nothing of the dropped speech is said"
    assert not any(f.speech for f in frames[-15:]), "then it idles"


def test_the_timeline_knows_when_speech_is_still_to_be_said(speech):
    tl = Timeline(Ones(), 25.0)
    assert not tl.speaking
    tl.add(speech[:SAMPLE_RATE])
    assert tl.speaking
    jobs = tl.advance(3 * SAMPLE_RATE)
    assert sum(j.speech for j in jobs) >= 24 and tl.speaking is False
    tl.add(speech[:800])
    tl.advance(3 * SAMPLE_RATE + 10)
    assert tl.speaking and not tl.queued, "on the timeline, not cut into frames yet"


async def _garbage(url: str) -> tuple[int, str]:
    import websockets

    async with websockets.connect(url) as ws:
        await ws.send(b"\xff\xfe garbage")
        message = json.loads(await ws.recv())["message"]
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code, message
    return 0, message


def test_a_hundred_connections_at_once(trained):
    """The server takes as many sessions as it may (6 here), tells the rest it is full, and still serves."""
    proc, server = start_server([trained], "--max-sessions", "6")
    try:
        _hundred(server)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_workers_failure_to_load_keeps_its_meaning_in_the_command(tmp_path):
    """A worker's error crosses to the command with the exit code the command itself would have given it."""
    from being_serve.workers import _as_being_error

    own = InputError("face5: never trained")
    assert _as_being_error(own) is own
    missing = _as_being_error(FileNotFoundError(2, "No such file or directory", str(tmp_path / "model.pt")))
    assert isinstance(missing, InputError) and str(tmp_path / "model.pt") in str(missing)
    crash = _as_being_error(RuntimeError("CUDA out of memory"))
    assert type(crash).__name__ == "BeingError" and crash.exit_code == 1
    assert str(crash) == "a worker process could not load the avatars: RuntimeError: CUDA out of memory"


def test_worker_processes_share_the_port_the_seats_and_the_figures(trained):
    """``--workers 2``: two processes serve one port; ``--max-sessions`` counts the sessions of both, /api/stats
    answers for both, and SIGTERM to the command ends them all."""
    proc, base = start_server([trained], "--workers", "2", "--max-sessions", "3")
    try:
        deadline = time.monotonic() + 120
        while len(json.loads(urllib.request.urlopen(f"{base}/api/stats").read())["workers"]) < 2:
            assert time.monotonic() < deadline, "the second worker did not come up"
            time.sleep(0.5)
        workers = process_tree(proc.pid) - {proc.pid}
        assert len(workers) >= 2  # and multiprocessing's resource tracker

        async def one(opened: asyncio.Event, hold: asyncio.Event):
            try:
                async with Client(ws_url(base), 16000) as c:
                    await c.send(np.zeros(8000, "<i2"))
                    await c.next_frame()
                    opened.set()
                    await hold.wait()
                    return "served"
            except ServerError as exc:
                return str(exc)

        async def five():
            hold = asyncio.Event()
            events = [asyncio.Event() for _ in range(5)]
            tasks = [asyncio.create_task(one(e, hold)) for e in events]
            while sum(e.is_set() for e in events) + sum(t.done() for t in tasks) < 5:
                await asyncio.sleep(0.2)
            stats = json.loads(urllib.request.urlopen(f"{base}/api/stats").read())
            hold.set()
            return await asyncio.gather(*tasks), stats

        results, stats = asyncio.run(five())
        assert results.count("served") == 3, results
        assert results.count("the server is full (3 sessions); try again later") == 2, results
        assert stats["sessions"] == 3 and sum(stats["workers"]) == 3, stats  # live, from the shared seats
        deadline = time.monotonic() + 10  # another worker's frames come with its next figures (once a second)
        while json.loads(urllib.request.urlopen(f"{base}/api/stats").read())["avatars"]["face5"]["frames"] == 0:
            assert time.monotonic() < deadline, "no frames in the figures"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _hundred(server: str) -> None:
    import websockets

    async def one():
        framed = False
        try:
            async with Client(ws_url(server), 16000) as c:
                await c.next_frame()
                framed = True
                await asyncio.sleep(1)
                return "served"
        except ServerError as exc:
            return str(exc)
        except websockets.ConnectionClosed as exc:  # a slow first frame may meet the 3 s idle timeout
            return "served" if framed else f"closed: {exc}"

    async def all_at_once():
        return await asyncio.gather(*[one() for _ in range(100)])

    results = asyncio.run(all_at_once())
    served = results.count("served")
    assert 1 <= served <= 6
    # refused in so many words, whether the error message or the close frame (code 1013, same text) came first
    assert all(r == "served" or "the server is full (6 sessions)" in r for r in results), set(results)

    async def after():
        async with Client(ws_url(server), 16000) as c:
            await c.send(np.zeros(8000, "<i2"))  # something within the idle timeout, however busy the server is
            return await c.next_frame()

    assert asyncio.run(after()).index >= 0


@pytest.mark.parametrize(("body", "status", "detail"), [
    (b"not json", 400, "the offer must be JSON: {sdp, type, avatar}"),
    (b'{"sdp": 1, "type": "offer"}', 400, 'the offer must be JSON {"sdp": "...", "type": "offer", "avatar": "NAME"}'),
    (b'{"sdp": "v=0", "type": "offer", "avatar": "nobody"}', 400, "no avatar 'nobody' here; this server has face5"),
    (b'{"sdp": "v=0", "type": "offer"}', 400, "the offer cannot be answered: "),
])
def test_a_bad_webrtc_offer_gets_a_clear_error(server, body, status, detail):
    request = urllib.request.Request(f"{server}/api/offer", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == status
    assert json.loads(err.value.read())["detail"].startswith(detail)
    assert json.loads(urllib.request.urlopen(f"{server}/api/stats").read())["sessions"] == 0, "nothing left open"


class StuckClient:
    """A WebSocket client that sends its start message and then never reads a frame (its sends never finish)."""

    headers: dict = {}
    query_params: dict = {}

    def __init__(self) -> None:
        self.texts: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.sent_start = False

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict:
        if not self.sent_start:
            self.sent_start = True
            return {"type": "websocket.receive", "text": json.dumps(START)}
        await asyncio.Event().wait()  # nothing more, ever
        return {}

    async def send_text(self, text: str) -> None:
        self.texts.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        await asyncio.Event().wait()  # the client's window is full: never done

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def test_a_client_that_never_reads_is_let_go(trained):
    """Its frames wait (the oldest dropped), then the server disconnects it; the avatar serves others meanwhile."""
    from being_serve.app import Server, websocket_session
    from being_serve.host import AvatarHost
    from being_serve.session import Settings

    host = AvatarHost(open_run(trained, REGISTRY, "cpu"))
    server = Server({"face5": host}, Settings(send_timeout=1.0))
    stuck = StuckClient()

    async def run():
        started = time.monotonic()
        await asyncio.wait_for(websocket_session(server, stuck), 30)
        return time.monotonic() - started

    try:
        took = asyncio.run(run())
    finally:
        host.close()
    assert stuck.texts[0]["type"] == "ready"
    assert stuck.texts[-1] == {"type": "error", "message": "the client took no frame for 1 s", "fatal": True}
    assert stuck.closed == (1008, "the client took no frame for 1 s")
    assert took < 20 and not server.sessions


def test_render_threads_hand_frames_back_in_the_order_they_were_submitted(trained, speech):
    """A CPU avatar's render threads each render their own frames; a thread that finishes first still waits for
    the frames submitted before its own. The first render is made slow, so that the second thread finishes
    first; every frame must be the avatar's render of that frame alone (to the rounding of a batch)."""
    import threading

    from being_serve.host import AvatarHost, Request
    from being_serve.timeline import FrameJob

    run = open_run(trained, REGISTRY, "cpu")
    stream = run.stream()
    windows = stream.push(np.concatenate([speech[:2 * SAMPLE_RATE], np.zeros(stream.lookahead, np.float32)]))
    render, calls = run.avatar.render, []

    def slow_first(steps, audio, quiet):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:  # the warm-up rendered once: this is the first frame a session asked for
            time.sleep(1.5)
        return render(steps, audio, quiet)

    run.avatar.render = slow_first
    session = run.avatar.session(7)
    steps = [session.step(0.0) for _ in range(6)]
    expected = [render([steps[i]], windows[i:i + 1], np.zeros(1, np.float32))[0][0] for i in range(6)]
    handed: list[tuple[int, np.ndarray]] = []
    host = AvatarHost(run, threads=2)
    try:
        jobs = [FrameJob(i, windows[i], 0.0, np.zeros(0, np.int16), True) for i in range(6)]
        host.submit([Request(jobs[0], steps[0], True, lambda job, frame, error: handed.append((job.index, frame)))])
        time.sleep(0.3)  # the first thread has taken frame 0: the other takes the rest
        host.submit([Request(j, st, True, lambda job, frame, error: handed.append((job.index, frame)))
                     for j, st in zip(jobs[1:], steps[1:], strict=True)])
        deadline = time.monotonic() + 60
        while len(handed) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        host.close()
    assert [i for i, _ in handed] == list(range(6))
    assert len(set(calls[1:])) == 2, "both threads rendered"
    alone = [(want.clamp(0, 1) * 255).round().byte().numpy().astype(int) for want in expected]
    for i, frame in handed:
        # a thread renders its frames in one batch: the CPU's sums round differently by batch size (1 of 255 at most)
        assert np.abs(frame - alone[i]).max() <= 1, f"frame {i}"
        assert all(np.abs(frame - alone[k]).max() > 1 for k in range(6) if np.abs(alone[k] - alone[i]).max() > 2), \
            f"frame {i} is another frame"


def test_serve_refuses_what_it_cannot_serve(prepared_face5, trained, tmp_path):
    cmd = [sys.executable, "-m", "being_core", "serve"]
    r = subprocess.run([*cmd, str(prepared_face5), "--port", str(free_port())], capture_output=True, text=True)
    assert r.returncode == 3 and f"{prepared_face5} has no trained avatar; run `being train {prepared_face5}` first" \
        in r.stderr
    r = subprocess.run([*cmd, str(prepared_face5), "--port", str(free_port()), "--workers", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and f"{prepared_face5} has no trained avatar" in r.stderr, r.stderr
    r = subprocess.run([*cmd, str(trained), "--host", "0.0.0.0"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "BEING_SERVE_TOKEN"})
    assert r.returncode == 2 and "--host 0.0.0.0 lets other machines in: give --token" in r.stderr


def test_a_token_keeps_others_out(trained):
    proc, base = start_server([trained], env={"BEING_SERVE_TOKEN": "s3cret"})
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/avatars")
        assert err.value.code == 401
        assert json.loads(urllib.request.urlopen(f"{base}/api/avatars?token=s3cret").read())[0]["name"] == "face5"
        code, message = asyncio.run(_error_of(ws_url(base), START))
        assert code == 1008 and message.startswith("not authorised")

        async def with_token():
            async with Client(ws_url(base), 16000, token="s3cret") as c:
                return await c.next_frame()

        assert asyncio.run(with_token()).index == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- a real browser -------------------------------------------------------------------------------------------


@pytest.fixture
def quiet_server(trained):
    """A server of its own: no other test's sessions share its two cores."""
    proc, base = start_server([trained])
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_the_page_shows_the_avatar_speaking_in_chromium(quiet_server, being_testdata, tmp_path):
    """Debian's chromium, driven by Playwright, plays a wav through its fake microphone into the page; the
    avatar's frames arrive in the page's video element over WebRTC, and they move."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run scripts/browser.sh (as root)")
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "mic.wav"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(being_testdata / "audio" / "videoretalking_audio1.wav"),
                    "-t", "8", "-ac", "1", "-ar", "48000", str(wav)], check=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(quiet_server + "/")
            page.wait_for_function("document.querySelector('#avatar').options.length > 0", timeout=30_000)
            assert page.locator("#avatar option").first.get_attribute("value") == "face5"
            page.click("#mic")
            page.wait_for_function("() => { const v = document.querySelector('video'); return v.readyState >= 2 && "
                                   "v.getVideoPlaybackQuality().totalVideoFrames > 25; }", timeout=60_000)
            grab = """() => { const v = document.querySelector('video'); const c = document.createElement('canvas');
                c.width = v.videoWidth; c.height = v.videoHeight; const g = c.getContext('2d'); g.drawImage(v, 0, 0);
                return Array.from(g.getImageData(0, 0, c.width, c.height).data); }"""
            first = np.array(page.evaluate(grab), np.float32)
            frames_before = page.evaluate("document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames")
            page.wait_for_timeout(2000)
            second = np.array(page.evaluate(grab), np.float32)
            frames_after = page.evaluate("document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames")
            assert page.evaluate("[document.querySelector('video').videoWidth, "
                                 "document.querySelector('video').videoHeight]") == [64, 64]
            assert frames_after - frames_before >= 20, "frames keep arriving (2 s)"
            assert first.std() > 10, "an image, not a blank frame"
            assert np.abs(first - second).mean() > 0.5, "the avatar moves"
            assert page.text_content("#status") == "live: microphone"
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            from PIL import Image

            box = page.locator("video").bounding_box()
            image = np.asarray(Image.open(shot).convert("RGB"), np.float32)
            inside = image[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
            assert inside.std() > 10, "the screenshot shows the avatar in the page"
        finally:
            browser.close()
