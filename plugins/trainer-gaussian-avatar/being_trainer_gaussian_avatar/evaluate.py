"""The held-out evaluation: every protocol's PSNR/SSIM, LPIPS, the mouth (lip sync), the side-by-side video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .avatar import Avatar
from .data import FrameCache, RunData
from .losses import composite, db, ssim


@torch.no_grad()
def evaluate(ctx, av: Avatar, data: RunData, cache: FrameCache | None = None, perceptual=None) -> dict:
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
    * the mouth (:func:`lip_sync`, where mediapipe is installed): opening correlation and bias, mouth LMD,
      audio-video offset, closed in silence, correlation with the speech envelope."""
    from .video import write_video

    sums = dict.fromkeys(("psnr", "psnr_gt_imgs", "psnr_full_frame", "psnr_full_frame_ceiling"), 0.0)  # squared errors
    ssims = dict.fromkeys(("ssim", "ssim_full_frame"), 0.0)  # SSIM x frames
    lpips_sum = 0.0
    preds, gts, values = [], [], 0
    for chunk in np.array_split(np.array(data.val_ids), max(1, len(data.val_ids) // 8)):
        ids = torch.as_tensor(chunk)
        if cache:
            image, head, bg = (t.float() for t in cache.batch(ids))
            image, bg = image / 255, bg / 255
        else:
            frames = [data.pixels(i) for i in chunk]
            image, head, bg = (torch.from_numpy(np.stack([f[k] for f in frames])).to(av.device) for k in range(3))
        rgb = av.render(ids, bg, deform=True)[0].clamp(0, 1)
        label = torch.from_numpy(np.stack([data.background_label(i) for i in chunk]))[..., None].to(av.device)
        target = composite(image, head, bg)
        sums["psnr"] += float(((rgb - target) ** 2).sum())
        sums["psnr_gt_imgs"] += float(((rgb - torch.where(label, bg, image)) ** 2).sum())
        sums["psnr_full_frame"] += float(((rgb - image) ** 2).sum())
        sums["psnr_full_frame_ceiling"] += float(((target - image) ** 2).sum())
        ssims["ssim"] += float(ssim(rgb, target)) * len(chunk)
        ssims["ssim_full_frame"] += float(ssim(rgb, image)) * len(chunk)
        if perceptual is not None:
            lpips_sum += float(perceptual(rgb, target).sum())
        values += image.numel()
        preds.append((rgb * 255).round().byte().cpu())
        gts.append((image * 255).round().byte().cpu())
    pred, gt = torch.cat(preds).numpy(), torch.cat(gts).numpy()
    out: dict[str, float | int | None] = {"val_frames": len(data.val_ids)}
    out.update({k: round(db(se / values), 3) for k, se in sums.items()})
    out.update({k: round(v / len(data.val_ids), 4) for k, v in ssims.items()})
    out["lpips"] = round(lpips_sum / len(data.val_ids), 4) if perceptual is not None else None
    out.update(lip_sync(data.root, data.val_ids, data.fps, pred, gt))
    write_video(ctx.output("avatar/val.mp4"), np.concatenate([pred, gt], 2))
    return out


def lip_sync(root: Path, ids: list[int], fps: float, pred: np.ndarray, gt: np.ndarray) -> dict:
    """The mouth of the held-out renders against the real frames and against the speech under them
    (:mod:`.lipsync`; ``*_real`` is the real frames' own score, for reference). All None when mediapipe is
    not installed here."""
    from being_core.audio import SAMPLE_RATE, read_wav

    from . import lipsync

    keys = ("mouth_corr", "mouth_bias_pct", "lmd", "av_offset", "silent_frames", "silent_closed",
            "silent_closed_real", "envelope_corr", "envelope_corr_real")
    try:
        rendered, real = lipsync.mouth_points(pred), lipsync.mouth_points(gt)
    except ImportError:
        return dict.fromkeys(keys)
    out = lipsync.against_real(rendered, real)
    wav = root / "aud.wav"
    if wav.is_file():
        lo = round(ids[0] / fps * SAMPLE_RATE)
        samples = read_wav(wav)[lo:lo + round(len(ids) / fps * SAMPLE_RATE)]
        out.update(lipsync.against_speech(rendered, samples, SAMPLE_RATE, fps))
        own = lipsync.against_speech(real, samples, SAMPLE_RATE, fps)
        out.update(silent_closed_real=own["silent_closed"], envelope_corr_real=own["envelope_corr"])
    return {k: out.get(k) for k in keys}
