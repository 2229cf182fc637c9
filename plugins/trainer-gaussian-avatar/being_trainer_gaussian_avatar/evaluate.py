"""The held-out evaluation: every protocol's PSNR/SSIM, LPIPS, the mouth (lip sync), the side-by-side video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from being_core.frames import VideoWriter, read_video

from .avatar import Avatar
from .data import FrameCache, RunData
from .losses import composite, db, ssim


class HeldOut:
    """The held-out metrics, accumulated batch by batch over the val frames in order: the same numbers for the
    trainer's own renders (:func:`evaluate`) and for frames made from them elsewhere (:func:`score`, a
    refiner's). Keeps the frames as uint8 for the mouth metrics and the side-by-side video (the val split)."""

    def __init__(self, data: RunData, perceptual=None):
        self.data, self.perceptual = data, perceptual
        self.sums = dict.fromkeys(("psnr", "psnr_gt_imgs", "psnr_full_frame", "psnr_full_frame_ceiling"), 0.0)
        self.ssims = dict.fromkeys(("ssim", "ssim_full_frame"), 0.0)  # SSIM x frames
        self.lpips_sum, self.values, self.frames = 0.0, 0, 0
        self.preds: list[torch.Tensor] = []
        self.gts: list[torch.Tensor] = []

    def add(self, ids: np.ndarray, rgb: torch.Tensor, image: torch.Tensor, head: torch.Tensor, bg: torch.Tensor):
        """One batch: renders ``rgb`` of frames ``ids`` with their real ``image``, ``head`` mask and ``bg``, all
        ``[B, H, W, C]`` floats in [0, 1] on one device."""
        label = torch.from_numpy(np.stack([self.data.background_label(i) for i in ids]))[..., None].to(rgb.device)
        target = composite(image, head, bg)
        self.sums["psnr"] += float(((rgb - target) ** 2).sum())
        self.sums["psnr_gt_imgs"] += float(((rgb - torch.where(label, bg, image)) ** 2).sum())
        self.sums["psnr_full_frame"] += float(((rgb - image) ** 2).sum())
        self.sums["psnr_full_frame_ceiling"] += float(((target - image) ** 2).sum())
        self.ssims["ssim"] += float(ssim(rgb, target)) * len(ids)
        self.ssims["ssim_full_frame"] += float(ssim(rgb, image)) * len(ids)
        if self.perceptual is not None:
            self.lpips_sum += float(self.perceptual(rgb, target).sum())
        self.values += image.numel()
        self.frames += len(ids)
        self.preds.append((rgb * 255).round().byte().cpu())
        self.gts.append((image * 255).round().byte().cpu())

    def result(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """``(metrics, rendered, real)``: the metrics and the frames as ``[T, H, W, 3]`` uint8."""
        n = self.frames
        pred, gt = torch.cat(self.preds).numpy(), torch.cat(self.gts).numpy()
        out: dict[str, float | int | None] = {"val_frames": n}
        out.update({k: round(db(se / self.values), 3) for k, se in self.sums.items()})
        out.update({k: round(v / n, 4) for k, v in self.ssims.items()})
        out["lpips"] = round(self.lpips_sum / n, 4) if self.perceptual is not None else None
        out.update(flicker(pred), flicker_real=flicker(gt)["flicker"])
        out.update(lip_sync(self.data.root, self.data.val_ids[:n], self.data.fps, pred, gt, self.data.n))
        return out, pred, gt


def flicker(frames: np.ndarray) -> dict:
    """``flicker``: the mean absolute difference of consecutive frames (0-255 scale), None for one frame. Next to
    the real frames' own (``flicker_real``), it tells whether frames change more than the real ones do."""
    if len(frames) < 2:
        return {"flicker": None}
    diffs = [np.abs(frames[i].astype(np.int16) - frames[i - 1]).mean() for i in range(1, len(frames))]
    return {"flicker": round(float(np.mean(diffs)), 3)}


def targets(data: RunData, ids: np.ndarray, device: torch.device, cache: FrameCache | None = None):
    """``(image, head, bg)`` of frames ``ids`` as floats in [0, 1] on ``device`` (from the cache when given)."""
    if cache:
        image, head, bg = (t.float() for t in cache.batch(torch.as_tensor(ids)))
        return image / 255, head, bg / 255
    frames = [data.pixels(i) for i in ids]
    return tuple(torch.from_numpy(np.stack([f[k] for f in frames])).to(device) for k in range(3))


@torch.no_grad()
def evaluate(ctx, av: Avatar, data: RunData, cache: FrameCache | None = None, perceptual=None,
             silence: str = "model") -> dict:
    """Metrics on the held-out frames (the val split), a side-by-side video, and LMD where mediapipe is
    installed (mouth landmarks of rendered vs real frames, in pixels at the training size).

    Each render is compared with three ground truths, one per protocol in use:

    * ``psnr``/``ssim``: the real head over the frame's background (torso over bc.jpg), which is the ground
      truth GaussianTalker trains and evaluates with (its ``render_from_batch`` builds ``gt_image * head_mask
      + bg_w_torso * ~head_mask``), so these are the numbers to compare with its published ones;
    * ``psnr_gt_imgs``: the frame with the pixels the parsing calls background replaced by bc.jpg
      (``gt_imgs``, as ER-NeRF and TalkingGaussian do);
    * ``psnr_full_frame``/``ssim_full_frame``: the real frame (``ori_imgs``) as it is. No render can match a
      background that changes during the clip (an animated studio wall) or hair the parsing calls
      background; ``psnr_full_frame_ceiling`` is what a perfect head scores here, i.e. how much of that
      error the background alone accounts for;
    * ``lpips`` (with ``lpips_weights``; otherwise null): LPIPS (AlexNet) against the ground truth of ``psnr``;
    * ``flicker``/``flicker_real``: the mean change between consecutive frames, rendered and real;
    * the mouth (:func:`lip_sync`, where mediapipe is installed): opening correlation and bias, mouth LMD,
      audio-video offset, closed in silence, correlation with the speech envelope.

    The held-out frames are rendered as ``being render`` renders their speech: with ``silence: close`` (and the
    other closing settings) the clip's pauses take a shut training frame's inputs (:func:`.render.own_inputs`);
    ``silence`` is reported."""
    from .render import own_inputs

    held = HeldOut(data, perceptual)
    val = np.array(data.val_ids)
    inputs = own_inputs(data, ctx, val, silence, av)
    done = 0
    for chunk in np.array_split(val, max(1, len(val) // 8)):
        image, head, bg = targets(data, chunk, av.device, cache)
        given = inputs.part(slice(done, done + len(chunk)))
        rgb = av.render(torch.as_tensor(chunk), bg, deform=True, **given)[0].clamp(0, 1)
        held.add(chunk, rgb, image, head, bg)
        done += len(chunk)
    out, pred, gt = held.result()
    out["silence"] = silence
    with VideoWriter(ctx.output("avatar/val.mp4"), data.fps) as video:
        video.write(np.concatenate([pred, gt], 2))
    return out


@torch.no_grad()
def score(ctx, cfg) -> dict:
    """The ``score`` action: :func:`evaluate`'s metrics for frames made from the held-out renders (a refiner's,
    :class:`being_core.ScoreParams`), against the same ground truths; written to the params' ``output``."""
    from .perceptual import load_lpips
    from .render import load_avatar_config

    params = ctx.params
    model, cfg, device = load_avatar_config(ctx, cfg)
    data = RunData.from_context(ctx, model["width"])
    held = HeldOut(data, load_lpips(cfg.lpips_weights, device) if cfg.lpips_weights else None)
    val = np.asarray(data.val_ids)
    seen = 0
    for batch in read_video(ctx.input(params.frames), 8):
        if batch.shape[1:3] != (data.height, data.width):
            raise ValueError(f"{params.frames} has frames of {batch.shape[2]}x{batch.shape[1]}, but the avatar renders "
                             f"{data.width}x{data.height}")
        ids = val[seen:seen + len(batch)]
        seen += len(batch)
        if len(ids) == len(batch):  # past the held-out frames: only counted, to say how many there are
            image, head, bg = targets(data, ids, device)
            held.add(ids, torch.from_numpy(batch).to(device).float() / 255, image, head, bg)
    if seen != len(val):
        raise ValueError(f"{params.frames} must hold the {len(val)} held-out frames, in order; it holds {seen}")
    out = held.result()[0]
    ctx.output(params.output).write_text(json.dumps(out, indent=2))
    return out


def clip_sync(root: Path, fps: float) -> tuple[float | None, str | None]:
    """:func:`.lipsync.clip_sync` of the run's tracked mouth (``face/landmarks.npy``, every frame) against its
    ``aud.wav``: how the real clip's own mouth follows its speech, and a warning when it looks out of sync;
    ``(None, None)`` without the speech."""
    from being_core.audio import SAMPLE_RATE, read_wav

    from . import lipsync

    wav = root / "aud.wav"
    if not wav.is_file():
        return None, None
    points = np.load(root / "face" / "landmarks.npy")[:, lipsync.MOUTH, :2]
    return lipsync.clip_sync(points, read_wav(wav), SAMPLE_RATE, fps)


def clip_pauses(root: Path, n_frames: int, fps: float, edge: int = 2) -> np.ndarray | None:
    """``[n_frames]`` bool: the pauses of the run's own speech (``aud.wav``), :func:`.lipsync.pauses` found over
    the whole clip (its loud level is the clip's, not a stretch's); None without the speech."""
    from being_core.audio import SAMPLE_RATE, read_wav

    from . import lipsync

    wav = root / "aud.wav"
    if not wav.is_file():
        return None
    return lipsync.pauses(lipsync.loudness(read_wav(wav), SAMPLE_RATE, n_frames, fps), fps, edge)


def lip_sync(root: Path, ids: list[int], fps: float, pred: np.ndarray, gt: np.ndarray, n_frames: int) -> dict:
    """The mouth of the held-out renders against the real frames and against the speech under them
    (:mod:`.lipsync`; ``*_real`` is the real frames' own score, for reference; the pauses are those of the
    clip's ``n_frames``, :func:`clip_pauses`). All None when mediapipe is not installed here."""
    from being_core.audio import SAMPLE_RATE, read_wav

    from . import lipsync

    keys = lipsync.KEYS
    try:
        rendered, real = lipsync.mouth_points(pred), lipsync.mouth_points(gt)
    except ImportError:
        return dict.fromkeys(keys)
    out = lipsync.against_real(rendered, real)
    quiet = clip_pauses(root, n_frames, fps)
    if quiet is not None:
        lo = round(ids[0] / fps * SAMPLE_RATE)
        samples = read_wav(root / "aud.wav")[lo:lo + round(len(ids) / fps * SAMPLE_RATE)]
        at = np.asarray(ids)
        out.update(lipsync.against_speech(rendered, samples, SAMPLE_RATE, fps, quiet[at]))
        own = lipsync.against_speech(real, samples, SAMPLE_RATE, fps, quiet[at])
        out.update(silent_closed_real=own["silent_closed"], envelope_corr_real=own["envelope_corr"])
    return {k: out.get(k) for k in keys}
