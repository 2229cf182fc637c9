"""The trained avatar rendering live sessions (:class:`being_core.live.LiveAvatar`), batched across sessions.

Each session moves through the training poses (played back and forth from a point of its own, so sessions do
not move in step; at half speed while it is quiet, between poses interpolated, so an idle head drifts slowly and
speech speeds it up without a jump), blinks on a natural schedule of its own, and closes its mouth where the
server says the speech pauses (``quiet``), as ``being render`` does with ``silence: close``. The backgrounds of the training
frames are decoded once, on the device, so a frame costs one batched deformation and rasterisation.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .avatar import Avatar
from .data import RunData, SmoothWindows, viewmats_from_track
from .render import BLINK, CLOSING, DeformInputs, blend_pauses, load_avatar_config, mouth_weight, pingpong, shut_reference

#: how fast an idle (quiet) head moves through the training poses, against 1 while speaking
IDLE_SPEED = 0.5


class Session:
    """One stream's place in the training poses and in its blink schedule."""

    def __init__(self, avatar: LiveAvatar, seed: int):
        self.avatar = avatar
        self.rng = np.random.default_rng(seed)
        self.cursor = float(self.rng.integers(len(avatar.cycle)))
        self.frame = 0
        self.blink_at = int(self.rng.uniform(0.5, 3.0) * avatar.fps)

    def step(self, quiet: float = 0.0) -> tuple[int, int, float, float]:
        """``(pose a, pose b, share of b, eye closure)`` of the next frame (poses as indices into the training
        frames); the poses move on by 1 a frame while speaking, by :data:`IDLE_SPEED` while ``quiet``."""
        a = self.avatar
        whole = int(self.cursor)
        here, there = int(a.cycle[whole % len(a.cycle)]), int(a.cycle[(whole + 1) % len(a.cycle)])
        share = self.cursor - whole
        self.cursor += 1.0 - (1.0 - IDLE_SPEED) * min(max(quiet, 0.0), 1.0)
        eye = a.rest_eye
        into = self.frame - self.blink_at
        if 0 <= into < len(BLINK):
            eye = a.rest_eye + (a.shut_eye - a.rest_eye) * float(BLINK[into])
        elif into >= len(BLINK):
            self.blink_at = self.frame + int(self.rng.uniform(2.0, 6.0) * a.fps)
        self.frame += 1
        return here, there, share, eye


class LiveAvatar:
    """The avatar of a trained run on one device, rendering frames of any sessions in one batch."""

    def __init__(self, ctx, cfg, device: str | None, progress=None):
        model, cfg, picked = load_avatar_config(ctx, cfg)
        self.torch_device = torch.device(device) if device else picked
        self.device = str(self.torch_device)
        data = RunData.from_context(ctx, model["width"])
        self.data, self.cfg = data, cfg
        self.av = Avatar(data, cfg, self.torch_device)
        self.av.load(model["model"])
        self.fps, self.width, self.height = data.fps, data.width, data.height
        self.train = torch.as_tensor(data.train_ids)
        self.cycle = pingpong(len(data.train_ids), 2 * len(data.train_ids))[:max(1, 2 * len(data.train_ids) - 2)]
        eyes = data.eye[self.train]
        self.rest_eye, self.shut_eye = float(eyes.median()), float(torch.quantile(eyes, 0.98))
        ref = shut_reference(data) if cfg.silence in CLOSING else None
        self.reference = None if ref is None else ref.frame
        # with close-mouth, how much of the shut frame's pose each Gaussian takes in pauses
        self.mouth = (mouth_weight(data, ref.frame, self.av.gauss.means).to(self.torch_device)
                      if ref is not None and cfg.silence == "close-mouth" else None)
        ids = list(data.train_ids)
        with ThreadPoolExecutor(4) as pool:
            backgrounds = list(pool.map(lambda i: data.pixels_u8(int(i))[2], ids))
        self.backgrounds = torch.from_numpy(np.stack(backgrounds)).to(self.torch_device)

    def session(self, seed: int) -> Session:
        return Session(self, seed)

    def window_filter(self) -> SmoothWindows | None:
        """An avatar trained with ``audio_smooth: k`` averages each frame's audio window with its neighbours' up
        to ``k`` frames away, later ones included: a session's windows go through that (``k`` frames more
        delay)."""
        return SmoothWindows(self.cfg.audio_smooth) if self.cfg.audio_smooth else None

    @torch.no_grad()
    def render(self, steps: list[tuple[int, int, float, float]], audio, quiet):
        here = self.train[torch.as_tensor([s[0] for s in steps])]
        there = self.train[torch.as_tensor([s[1] for s in steps])]
        share = torch.tensor([s[2] for s in steps], dtype=torch.float32)
        eye = torch.tensor([s[3] for s in steps], dtype=torch.float32)
        d = self.data
        mix = share[:, None]
        camera = d.camera[here] * (1 - mix) + d.camera[there] * mix
        viewmats = viewmats_from_track(d.euler[here] * (1 - mix) + d.euler[there] * mix,
                                       d.trans[here] * (1 - mix) + d.trans[there] * mix)
        nearest = torch.as_tensor([s[1] if s[2] >= 0.5 else s[0] for s in steps])
        ids = self.train[nearest]  # the background, the intrinsics: the nearer pose's
        inputs = DeformInputs(torch.as_tensor(np.asarray(audio, np.float32)), camera)
        if self.reference is not None:  # in pauses: the inputs of a training frame whose mouth is shut
            w = torch.as_tensor(np.asarray(quiet, np.float32))
            inputs = blend_pauses(self.data, self.reference, inputs.audio, camera, w, self.cfg.silence, self.mouth)
        bg = self.backgrounds[nearest.to(self.torch_device)].float() / 255
        rgb, alpha, _ = self.av.render(ids, bg, deform=True, eye=eye, viewmats=viewmats, **inputs.part(slice(None)))
        return rgb.clamp(0, 1), alpha[..., 0]
