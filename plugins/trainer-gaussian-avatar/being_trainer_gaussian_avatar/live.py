"""The trained avatar rendering live sessions (:class:`being_core.live.LiveAvatar`), batched across sessions.

Each session moves through the training poses (played back and forth from a point of its own, so sessions do
not move in step), blinks on a natural schedule of its own, and closes its mouth where the server says the
speech pauses (``quiet``), as ``being render`` does with ``silence: close``. The backgrounds of the training
frames are decoded once, on the device, so a frame costs one batched deformation and rasterisation.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .avatar import Avatar
from .data import RunData
from .render import BLINK, load_avatar_config, pingpong, shut_reference


class Session:
    """One stream's place in the training poses and in its blink schedule."""

    def __init__(self, avatar: LiveAvatar, seed: int):
        self.avatar = avatar
        self.rng = np.random.default_rng(seed)
        self.cursor = int(self.rng.integers(len(avatar.cycle)))
        self.frame = 0
        self.blink_at = int(self.rng.uniform(0.5, 3.0) * avatar.fps)

    def step(self) -> tuple[int, float]:
        """``(index into the training frames, eye closure)`` of the next frame."""
        a = self.avatar
        pos = int(a.cycle[self.cursor % len(a.cycle)])
        self.cursor += 1
        eye = a.rest_eye
        into = self.frame - self.blink_at
        if 0 <= into < len(BLINK):
            eye = a.rest_eye + (a.shut_eye - a.rest_eye) * float(BLINK[into])
        elif into >= len(BLINK):
            self.blink_at = self.frame + int(self.rng.uniform(2.0, 6.0) * a.fps)
        self.frame += 1
        return pos, eye


class LiveAvatar:
    """The avatar of a trained run on one device, rendering frames of any sessions in one batch."""

    def __init__(self, ctx, cfg, device: str | None, progress=None):
        model, cfg, picked = load_avatar_config(ctx, cfg)
        if cfg.audio_smooth:
            raise ValueError(f"{ctx.root}: this avatar was trained with audio_smooth: {cfg.audio_smooth}, which "
                             "averages each frame's audio with later frames'; live rendering does not do that yet")
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
        self.reference = shut_reference(data) if cfg.silence == "close" else None
        ids = list(data.train_ids)
        with ThreadPoolExecutor(4) as pool:
            backgrounds = list(pool.map(lambda i: data.pixels_u8(int(i))[2], ids))
        self.backgrounds = torch.from_numpy(np.stack(backgrounds)).to(self.torch_device)

    def session(self, seed: int) -> Session:
        return Session(self, seed)

    @torch.no_grad()
    def render(self, steps: list[tuple[int, float]], audio, quiet):
        pos = torch.as_tensor([p for p, _ in steps])
        ids = self.train[pos]
        eye = torch.tensor([e for _, e in steps], dtype=torch.float32)
        audio = torch.as_tensor(np.asarray(audio, np.float32))
        camera = self.data.camera[ids]
        if self.reference is not None:  # in pauses: the inputs of a training frame whose mouth is shut
            w = torch.as_tensor(np.asarray(quiet, np.float32))
            audio = audio * (1 - w[:, None, None]) + self.data.audio[self.reference][None] * w[:, None, None]
            camera = camera * (1 - w[:, None]) + self.data.camera[self.reference][None] * w[:, None]
        bg = self.backgrounds[pos.to(self.torch_device)].float() / 255
        rgb, alpha, _ = self.av.render(ids, bg, deform=True, audio=audio, eye=eye, camera=camera)
        return rgb.clamp(0, 1), alpha[..., 0]
