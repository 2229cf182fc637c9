"""Rendering the trained avatar for new audio."""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

import numpy as np
import torch

from being_core.audio import SAMPLE_RATE, read_wav
from being_core.frames import VideoWriter
from being_core.stage import REPLAY_DIR, alpha_path

from . import GaussianAvatar, lipsync
from .avatar import Avatar
from .data import RunData, load_tensors, pick_device, smooth_audio

#: settings that say where and how to render, not what was trained: taken from the render's config, not the
#: model's (the render-only settings, which never retrain, and where the work runs)
RENDER_SETTINGS = (*GaussianAvatar.action_settings["render"], "device", "backend", "frame_cache", "num_workers")


def pingpong(n_source: int, n_out: int) -> np.ndarray:
    """``0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...`` for ``n_out`` frames: poses and backgrounds played back and
    forth, so a long render never jumps."""
    if n_source == 1:
        return np.zeros(n_out, dtype=np.int64)
    cycle = np.concatenate([np.arange(n_source), np.arange(n_source - 2, 0, -1)])
    return cycle[np.arange(n_out) % len(cycle)]


def most_typical(data: RunData, ids) -> int:
    """Of frames ``ids``, the one whose pose is closest to the mean pose (the camera inputs are standardised:
    0 is the mean)."""
    ids = torch.as_tensor(np.asarray(ids))
    return int(ids[(data.camera[ids] ** 2).sum(1).argmin()])


def typical_frame(data: RunData) -> int:
    """The training frame whose pose is closest to the mean training pose."""
    return most_typical(data, data.train_ids)


def head_motion(data: RunData, pose: str, n_out: int, ctx):
    """``(ids, viewmats, camera)`` for ``n_out`` frames: the training frame each one takes its background (and,
    unless ``viewmats`` is given, its camera) from, the head-to-camera matrices (None: those frames' own) and
    the deformer's pose inputs. ``pose``: 'train', 'still' or a run-relative .npy of ``[T, 6]`` poses (Euler
    angles and translation as in track_params.pt), played back and forth."""
    from .data import viewmats_from_track

    if pose == "train":
        ids = np.asarray(data.train_ids)[pingpong(len(data.train_ids), n_out)]
        return ids, None, data.camera[torch.as_tensor(ids)]
    if pose == "still":
        ids = np.full(n_out, typical_frame(data))
        return ids, None, data.camera[torch.as_tensor(ids)]
    try:
        poses = np.load(ctx.input(pose), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"the pose file {pose} cannot be read as a .npy array: {exc}") from None
    if poses.ndim != 2 or poses.shape[1] != 6 or len(poses) == 0 or not np.isfinite(poses).all():
        raise ValueError(f"the pose file {pose} holds an array of shape {list(poses.shape)} ({poses.dtype}); it must "
                         "be [T, 6] finite numbers: Euler angles (radians) and translation, as in track_params.pt")
    poses = torch.from_numpy(poses[pingpong(len(poses), n_out)]).float()
    camera = (poses - data.camera_mean) / data.camera_std
    train = torch.as_tensor(data.train_ids)
    nearest = train[torch.cdist(camera, data.camera[train]).argmin(1)]  # background of the closest training pose
    return nearest.numpy(), viewmats_from_track(poses[:, :3], poses[:, 3:]), camera


#: a natural blink: eye closure over 7 frames (40 ms each at 25 fps), as a share of the clip's full closure
BLINK = np.array([0.35, 0.8, 1.0, 1.0, 0.7, 0.35, 0.1])


def blinks(data: RunData, blink: str, ids: np.ndarray, seed: int) -> torch.Tensor:
    """``[n]`` eye closure for the rendered frames: 'track' the training frames' own, 'none' the clip's usual
    open eyes, 'natural' blinks every 2 to 6 seconds (about 15 a minute; the same for the same seed)."""
    if blink == "track":
        return data.eye[torch.as_tensor(ids)]
    train = data.eye[torch.as_tensor(data.train_ids)]
    rest = float(train.median())
    eye = torch.full((len(ids),), rest)
    if blink == "none":
        return eye
    shut = float(torch.quantile(train, 0.98))
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.5, 3.0) * data.fps
    while t < len(ids):
        at = int(t)
        span = BLINK[:len(ids) - at]
        eye[at:at + len(span)] = torch.from_numpy(rest + (shut - rest) * span).float()
        t += rng.uniform(2.0, 6.0) * data.fps
    return eye


#: frames over which the silence inputs fade in at the start of a pause and out at its end
FADE = 3


#: the reference for the pauses is chosen among frames whose mouth stays shut this many frames either side: at
#: the edge of a shut stretch the mouth is about to open (or still closing), and the avatar renders it half open
#: (docs/benchmarks.md, lip sync)
SHUT_MARGIN = 2
#: openings this close to the most settled candidate's count as equally shut (the tracker's noise on shut lips)
SHUT_TIE = 0.01


def widest_opening(opening: np.ndarray) -> np.ndarray:
    """``[T]``: per frame, the widest mouth ``opening`` over :data:`SHUT_MARGIN` frames either side (frames beyond
    the clip's ends, or without a face, count as open)."""
    padded = np.pad(np.nan_to_num(opening, nan=np.inf), SHUT_MARGIN, constant_values=np.inf)
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * SHUT_MARGIN + 1).max(1)


def most_settled(opening: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Of frames ``ids`` (whose mouth ``opening`` is shut), those where it stays shut most firmly: the smallest
    :func:`widest_opening`, within :data:`SHUT_TIE`. ``ids`` itself when none stays shut that long."""
    widest = widest_opening(opening)[ids]
    if not (widest < lipsync.CLOSED).any():
        return ids
    return ids[widest <= widest.min() + SHUT_TIE]


class ShutReference(NamedTuple):
    """The training frame whose inputs the pauses of new speech borrow, and how it was found (for the log)."""

    frame: int
    how: str


def shut_reference(data: RunData) -> ShutReference | None:
    """A training frame whose tracked mouth is shut while the speech pauses (of those, the :func:`most_settled`,
    and of those the one with the most typical pose), or else the quietest frame with a shut mouth (the most
    typical pose when the run has no ``aud.wav`` to tell); None when the tracked mouth never shuts."""
    lm = np.load(data.root / "face" / "landmarks.npy")[:, lipsync.MOUTH, :2]
    opening = lipsync.opening(lm)
    train = np.asarray(data.train_ids)
    shut = train[opening[train] < lipsync.CLOSED]
    if not len(shut):
        return None
    wav = data.root / "aud.wav"
    if not wav.is_file():
        return ShutReference(most_typical(data, shut), "the most typical shut frame: the run has no aud.wav to "
                             "find its pauses")
    level = lipsync.loudness(read_wav(wav), SAMPLE_RATE, data.n, data.fps)
    silent = shut[lipsync.pauses(level, data.fps)[shut]]
    if not len(silent):
        return ShutReference(int(shut[level[shut].argmin()]), "the quietest shut frame: in the clip's own pauses "
                             "the mouth never shuts")
    frame = most_typical(data, most_settled(opening, silent))
    steady = widest_opening(opening)[frame] < lipsync.CLOSED
    return ShutReference(frame, f"shut in a pause{f' and {SHUT_MARGIN} frames either side' if steady else ''}")


#: the ``silence`` settings that shut the mouth in pauses, and what of the shut frame's inputs the pauses take
CLOSING = {"close": "audio and pose inputs", "close-audio": "audio inputs",
           "close-mouth": "audio inputs (and, around the mouth, pose input)"}
#: with ``silence: close-mouth``, the Gaussians within this many lip boxes' half-sizes of the mouth's centre
#: (beyond the box, fading linearly) take the shut frame's pose input (:func:`mouth_weight`)
MOUTH_REACH = 2.0


class DeformInputs(NamedTuple):
    """The deformer's inputs for consecutive frames: ``audio`` windows ``[T, W, D]``, pose (``camera``) inputs
    ``[T, C]`` and, with ``silence: close-mouth``, ``mouth``: the pose inputs ``[T, C]`` of the Gaussians around
    the mouth and how much of them each Gaussian takes ``[N]``."""

    audio: torch.Tensor
    camera: torch.Tensor
    mouth: tuple[torch.Tensor, torch.Tensor] | None = None

    def part(self, at: slice) -> dict:
        """:meth:`.Avatar.render`'s keyword arguments for frames ``at`` of these (``mouth`` only where its pose
        differs from the frames', so that frames out of pauses deform once)."""
        given: dict = {"audio": self.audio[at], "camera": self.camera[at]}
        if self.mouth is not None and not torch.equal(self.mouth[0][at], given["camera"]):
            given["mouth"] = (self.mouth[0][at], self.mouth[1])
        return given


def mouth_weight(data: RunData, frame: int, means: torch.Tensor) -> torch.Tensor:
    """``[N]``: how much of the mouth's pose input each of the canonical ``means`` takes: 1 within the lip box of
    training frame ``frame`` (``data.lips``) when the means are placed at that frame's tracked pose and projected
    with its camera, falling linearly to 0 at :data:`MOUTH_REACH` times the box's half-sizes from its centre (boxes
    of its shape around it); 0 behind the camera."""
    means = means.detach().float().cpu()
    view, k = data.viewmats[frame].float(), data.Ks[frame].float()
    cam = means @ view[:3, :3].T + view[:3, 3]
    uv = cam @ k.T
    uv = uv[:, :2] / uv[:, 2:].clamp(min=1e-6)
    x0, y0, x1, y1 = data.lips[frame].float()
    centre = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2])
    half = torch.stack([x1 - x0, y1 - y0]).clamp(min=2) / 2
    reach = ((uv - centre).abs() / half).amax(1)
    weight = ((MOUTH_REACH - reach) / (MOUTH_REACH - 1)).clamp(0, 1)
    return torch.where(cam[:, 2] > 0, weight, torch.zeros_like(weight))


def close_in_pauses(data: RunData, ctx, audio: torch.Tensor, camera: torch.Tensor, quiet: np.ndarray,
                    silence: str, av: Avatar | None = None) -> DeformInputs:
    """The deformer's inputs ``audio`` and ``camera`` with, in the frames ``quiet`` marks (the pauses of their
    speech: :func:`.lipsync.pauses` with no edge), those of a training frame with a shut mouth in silence
    (:func:`shut_reference`), faded in and out over :data:`FADE` frames: as ``silence`` says (:data:`CLOSING`).

    ``close`` gives the pauses the shut frame's audio window and pose input; the deformer places and shapes the
    whole head by the pose as well as the mouth, so the head moves by a pixel or two in pauses (held-out PSNR
    0.9 dB lower than with each frame's own pose; docs/benchmarks.md). ``close-audio`` gives the audio window
    only: the head stays, the mouth shuts less firmly. ``close-mouth`` gives the audio window, and the pose input
    only to the Gaussians around the mouth (:func:`mouth_weight` of the Gaussians of ``av``, the avatar)."""
    ref = shut_reference(data)
    if ref is None:
        ctx.log.warning("silence: %s: the tracked mouth never shuts in this run; the pauses are left to the model",
                        silence)
        return DeformInputs(audio, camera)
    w = torch.from_numpy(np.convolve(quiet, np.ones(2 * FADE + 1) / (2 * FADE + 1), "same")).to(audio.dtype)
    ctx.log.info("silence: %s: %d of %d frames are in pauses; they take the %s of training frame %d (%s)",
                 silence, int(quiet.sum()), len(audio), CLOSING[silence], ref.frame, ref.how)
    weight = None
    if silence == "close-mouth":
        if av is None:
            raise ValueError("silence: close-mouth needs the avatar's Gaussians to find those around the mouth")
        weight = mouth_weight(data, ref.frame, av.gauss.means).to(av.device)
    return blend_pauses(data, ref.frame, audio, camera, w, silence, weight)


def blend_pauses(data: RunData, ref: int, audio: torch.Tensor, camera: torch.Tensor, w: torch.Tensor, silence: str,
                 weight: torch.Tensor | None = None) -> DeformInputs:
    """The deformer's inputs ``audio`` and ``camera`` moved by the share ``w [T]`` of each frame to training
    frame ``ref``'s, as ``silence`` says (:func:`close_in_pauses`; ``weight``: :func:`mouth_weight`, for
    ``close-mouth``). What a render and a live session share."""
    audio = audio * (1 - w[:, None, None]) + data.audio[ref][None] * w[:, None, None]
    shut = camera * (1 - w[:, None]) + data.camera[ref][None] * w[:, None]
    if silence == "close":
        return DeformInputs(audio, shut)
    if silence == "close-mouth":
        if weight is None:
            raise ValueError("silence: close-mouth needs the mouth weight of each Gaussian (mouth_weight)")
        return DeformInputs(audio, camera, (shut, weight))
    return DeformInputs(audio, camera)


def own_inputs(data: RunData, ctx, ids: np.ndarray, silence: str, av: Avatar | None = None) -> DeformInputs:
    """The deformer's inputs for the run's own consecutive frames ``ids`` as ``being render`` gives them to the
    run's own speech, so that the held-out metrics (and a refiner's pairs) measure the avatar a user gets: each
    frame's own, and with a closing ``silence`` (:data:`CLOSING`) the clip's pauses (found over its whole
    ``aud.wav``, as a render finds them over its whole audio) moved to a shut training frame's
    (:func:`close_in_pauses`; ``av``: the avatar, for ``close-mouth``)."""
    from .evaluate import clip_pauses

    at = torch.as_tensor(np.asarray(ids))
    own = DeformInputs(data.audio[at], data.camera[at])
    quiet = clip_pauses(data.root, data.n, data.fps, edge=0) if silence in CLOSING else None
    if quiet is None:
        return own
    return close_in_pauses(data, ctx, own.audio, own.camera, quiet[np.asarray(ids)], silence, av)


def load_avatar_config(ctx, cfg):
    """``(model, cfg, device)``: the saved model, the avatar's config as it was trained (its shape, its inputs)
    with where and how to render taken from ``cfg`` (:data:`RENDER_SETTINGS`), and the device."""
    model = load_tensors(ctx.input("avatar/model.pt"), "avatar/model.pt")
    here = {k: getattr(cfg, k) for k in RENDER_SETTINGS}
    cfg = type(cfg)(**{**model["config"], **here})
    return model, cfg, pick_device(cfg.device)


def load_avatar(ctx, cfg):
    """``(avatar, data, model, cfg)``: the trained avatar, ready to render, on the run it was trained on."""
    model, cfg, device = load_avatar_config(ctx, cfg)
    data = RunData.from_context(ctx, model["width"])
    av = Avatar(data, cfg, device)
    av.load(model["model"])
    return av, data, model, cfg


def u8(t: torch.Tensor) -> np.ndarray:
    """``[B, H, W, C]`` floats in [0, 1] on any device as uint8 (C = 1 dropped)."""
    out = (t.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return out[..., 0] if out.shape[-1] == 1 else out


@torch.no_grad()
def replay(ctx, cfg) -> dict:
    """The ``replay`` action: every frame of the run rendered with its own audio, pose and eyes (its pauses as
    ``silence`` says, :func:`own_inputs`), over its own background, the splits written losslessly to
    :data:`REPLAY_DIR` with the head's alpha (for a refiner)."""
    av, data, _, cfg = load_avatar(ctx, cfg)
    started = time.monotonic()
    for split, ids in (("train", data.train_ids), ("val", data.val_ids)):
        inputs = own_inputs(data, ctx, np.asarray(ids), cfg.silence, av)
        rgb_path = f"{REPLAY_DIR}/{split}.mkv"
        with ctx.progress.task(f"replay: {split} frames", total=len(ids), unit="frame") as task, \
                VideoWriter(ctx.output(rgb_path), data.fps) as frames, \
                VideoWriter(ctx.output(alpha_path(rgb_path)), data.fps, gray=True) as alphas:
            for lo in range(0, len(ids), cfg.render_batch):
                part = ids[lo:lo + cfg.render_batch]
                bg = torch.from_numpy(np.stack([data.pixels(i)[2] for i in part])).to(av.device)
                given = inputs.part(slice(lo, lo + len(part)))
                rgb, alpha, _ = av.render(torch.as_tensor(part), bg, deform=True, **given)
                frames.write(u8(rgb))
                alphas.write(u8(alpha))
                task.advance(len(part))
    return {"train_frames": len(data.train_ids), "val_frames": len(data.val_ids),
            "seconds": round(time.monotonic() - started, 2)}


@torch.no_grad()
def render(ctx, cfg) -> dict:
    params = ctx.params
    av, data, model, cfg = load_avatar(ctx, cfg)
    device = av.device
    features = np.load(ctx.input(params.features)).astype(np.float32)
    want = model["audio"]
    if features.shape[1:] != (want["window"], want["dim"]):
        raise ValueError(f"{params.features} has windows {list(features.shape[1:])}, but the avatar was trained "
                         f"on [{want['window']}, {want['dim']}] from '{want['encoder']}'")
    n_out = int(params.n_frames)
    seq, viewmats, camera = head_motion(data, params.pose, n_out, ctx)
    eye = blinks(data, params.blink, seq, cfg.seed)
    audio = torch.from_numpy(features[:n_out])
    if len(audio) < n_out:  # at most one frame short: repeat the last window
        audio = torch.cat([audio, audio[-1:].expand(n_out - len(audio), -1, -1)])
    audio = smooth_audio(audio, cfg.audio_smooth)
    samples = read_wav(ctx.input(params.audio))
    inputs = DeformInputs(audio, camera)
    if cfg.silence in CLOSING:
        quiet = lipsync.pauses(lipsync.loudness(samples, SAMPLE_RATE, n_out, data.fps), data.fps, edge=0)
        inputs = close_in_pauses(data, ctx, audio, camera, quiet, cfg.silence, av)
    started = time.monotonic()
    mouths: list[np.ndarray] = []  # the mouth of every frame, measured as it goes by (memory stays bounded)

    def frames(meter, lossless):
        with ctx.progress.task("render: frames", total=n_out, unit="frame") as task:
            for lo in range(0, n_out, cfg.render_batch):
                ids = seq[lo:lo + cfg.render_batch]
                bg = torch.from_numpy(np.stack([data.pixels(int(i))[2] for i in ids])).to(device)
                part = slice(lo, lo + len(ids))
                rgb, alpha, _ = av.render(torch.as_tensor(ids), bg, deform=True, eye=eye[part],
                                          viewmats=None if viewmats is None else viewmats[part], **inputs.part(part))
                batch = u8(rgb)
                if lossless:  # for a refiner: the frames as they are, and the head's coverage
                    lossless[0].write(batch)
                    lossless[1].write(u8(alpha))
                if meter:
                    mouths.extend(meter.points(frame) for frame in batch)
                yield batch
                task.advance(len(ids))

    with contextlib.ExitStack() as stack:
        try:
            meter = stack.enter_context(lipsync.MouthMeter())
        except ImportError:  # no mediapipe here: the video without its mouth metrics
            meter = None
        lossless = None
        if params.frames:
            lossless = (stack.enter_context(VideoWriter(ctx.output(params.frames), data.fps)),
                        stack.enter_context(VideoWriter(ctx.output(alpha_path(params.frames)), data.fps, gray=True)))
        video = stack.enter_context(VideoWriter(ctx.output(params.output), data.fps, audio=ctx.input(params.audio)))
        for batch in frames(meter, lossless):
            video.write(batch)
    seconds = round(time.monotonic() - started, 2)
    metrics: dict = {"frames": n_out, "seconds": seconds, "device": str(device)}
    if meter:  # how the mouth follows the new speech: closed in its pauses, open with its loudness
        metrics.update(lipsync.against_speech(np.array(mouths), samples, SAMPLE_RATE, data.fps))
    else:
        metrics.update(silent_frames=None, silent_closed=None, envelope_corr=None)
    return metrics
