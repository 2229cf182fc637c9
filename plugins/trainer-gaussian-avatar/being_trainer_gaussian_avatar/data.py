"""The prepared run folder as the trainer reads it, frames streamed from disk with bounded memory.

Cameras come from ``track_params.pt`` (euler, raw trans in decimetres, focal), images from ``ori_imgs``,
the head mask from ``parsing`` (B=255, G=0, R=0 in cv2 order, i.e. RGB (0, 0, 255)), the per-frame background is
``torso_imgs`` composited over ``bc.jpg``, audio features from the file the audio encoder's info names, the
train/val split from the dataset facts.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import torch

from being_core import DatasetFacts, StageContext, StageKind
from being_core.audio import AudioFeatures

# FaceMesh eye contour points for the eye-aspect-ratio blink signal (used when there is no au.csv).
EYES = [(159, 145, 33, 133), (386, 374, 362, 263)]


def load_tensors(path: Path, name: str) -> dict:
    """``torch.load`` restricted to tensors and plain values (``weights_only``): a file from someone else's run
    folder (a shared avatar, a checkpoint) is data, never code. ValueError naming ``name`` otherwise."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name} holds more than tensors and plain values; refusing to load it, since loading "
                         f"could run code from it ({reason})") from None


def pick_device(setting: str) -> torch.device:
    """The device of a ``device`` setting: 'auto' takes the GPU when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def euler2rot(euler: torch.Tensor) -> torch.Tensor:
    """The reference tracker's ``rot_x @ rot_y @ rot_z`` (the angles of ``track_params.pt``): standard rotations
    about x and y, and the transposed one about z (its code builds the matrices from column vectors)."""
    a, b, c = euler[:, 0], euler[:, 1], euler[:, 2]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, a.cos(), -a.sin(), zero, a.sin(), a.cos()], 1).view(-1, 3, 3)
    ry = torch.stack([b.cos(), zero, b.sin(), zero, one, zero, -b.sin(), zero, b.cos()], 1).view(-1, 3, 3)
    rz = torch.stack([c.cos(), c.sin(), zero, -c.sin(), c.cos(), zero, zero, zero, one], 1).view(-1, 3, 3)
    return rx @ ry @ rz


def track_euler(track: dict) -> torch.Tensor:
    """``track_params.pt``'s angles in the reference's convention. Files written before face-mediapipe 0.2.0
    (no ``euler_convention``) hold them with x and y negated; they are converted."""
    euler = track["euler"].float()
    if track.get("euler_convention") != "reference":
        euler = euler * torch.tensor([-1.0, -1.0, 1.0])
    return euler


def viewmats_from_track(euler: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """World (head frame) to OpenCV camera ``[N, 4, 4]``: the tracker's OpenGL camera with y and z flipped."""
    w2c = torch.eye(4).repeat(len(euler), 1, 1)
    w2c[:, :3, :3] = euler2rot(euler)
    w2c[:, :3, 3] = trans
    return torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])) @ w2c


def eye_signal(root: Path, n: int) -> tuple[np.ndarray, str]:
    """``[n]`` eye closure in [0, 1]: OpenFace-style ``AU45_r`` clipped to [0, 2] / 2 when ``au.csv`` exists,
    otherwise one minus the normalised eye aspect ratio of the tracked landmarks."""
    au = root / "au.csv"
    if au.is_file():
        with open(au, newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
        if len(rows) == n and rows and "AU45_r" in rows[0]:
            return np.clip(np.array([float(r["AU45_r"]) for r in rows]), 0, 2) / 2, "au.csv AU45_r"
    lm = np.load(root / "face" / "landmarks.npy")
    ear = np.mean([np.linalg.norm(lm[:, up, :2] - lm[:, down, :2], axis=-1) /
                   np.linalg.norm(lm[:, left, :2] - lm[:, right, :2], axis=-1).clip(1e-6)
                   for up, down, left, right in EYES], 0)
    lo, hi = np.percentile(ear, 2), np.percentile(ear, 98)
    return np.clip(1 - (ear - lo) / max(hi - lo, 1e-6), 0, 1), "landmark eye aspect ratio"


class RunData:
    """Everything per frame that is small enough to keep in memory; pixels are read on demand."""

    def __init__(self, root: Path, facts: DatasetFacts, features: AudioFeatures, resolution: int | None):
        self.root, self.n, self.fps = root, facts.n_frames, facts.fps
        self.src_w, self.src_h = facts.width, facts.height
        self.width = resolution or self.src_w
        self.height = round(self.src_h * self.width / self.src_w)
        s = self.width / self.src_w
        track = load_tensors(root / "track_params.pt", "track_params.pt")
        self.euler, self.trans = track_euler(track), track["trans"].float()
        focal = float(track["focal"].reshape(-1)[0])
        vertices = track["vertices"].float()
        self.points = vertices.mean(0)
        # the head model's per-frame motion around its mean (expression, jaw, eyelids), in head units: what the
        # expression loss (lambda_expr) has the deformation follow; half precision (~1e-5 of a ~1e-2 motion)
        self.expression = (vertices - self.points).half()
        self.viewmats = viewmats_from_track(self.euler, self.trans)
        k = torch.tensor([[focal * s, 0, self.src_w / 2 * s], [0, focal * s, self.src_h / 2 * s], [0, 0, 1]])
        self.Ks = k.repeat(self.n, 1, 1)
        cam = torch.cat([self.euler, self.trans], 1)
        self.camera_mean, self.camera_std = cam.mean(0), cam.std(0).clamp(min=1e-4)
        self.camera = (cam - self.camera_mean) / self.camera_std
        self.features = features
        audio = np.load(root / self.features.file)
        if audio.shape[0] != self.n or audio.shape[2] != self.features.dim:
            raise ValueError(f"{self.features.file} has shape {list(audio.shape)}, but its encoder says "
                             f"[{self.n}, {self.features.window}, {self.features.dim}]")
        self.audio = torch.from_numpy(audio).float()
        eye, self.eye_source = eye_signal(root, self.n)
        self.eye = torch.from_numpy(eye).float()
        lms = np.stack([np.loadtxt(root / "ori_imgs" / f"{i}.lms") for i in range(self.n)]) * s
        self.lips = lip_boxes(lms, self.width, self.height)
        self.train_ids, self.val_ids = facts.train_ids, facts.val_ids

    @classmethod
    def from_context(cls, ctx: StageContext, resolution: int | None) -> RunData:
        """The run a stage context points at: its dataset facts and its audio encoder's features."""
        features = AudioFeatures.from_info(ctx.stage_info(StageKind.AUDIO_ENCODER))
        return cls(ctx.root, ctx.dataset, features, resolution)

    def pixels_u8(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``i`` at the training size as uint8: RGB image ``[H, W, 3]``, head mask ``[H, W]`` (0/1) and
        background ``[H, W, 3]`` (torso over bc.jpg). uint8 keeps loader traffic 4x smaller than float."""
        from PIL import Image

        size = (self.width, self.height)

        def load(rel: str, mode: str) -> np.ndarray:
            try:
                image = Image.open(self.root / rel)
                image.load()
            except (OSError, ValueError) as exc:
                raise ValueError(f"{rel} in {self.root} cannot be read: {exc}") from None
            image = image.convert(mode)
            return np.asarray(image if image.size == size else image.resize(size, Image.BOX))

        if getattr(self, "_bc", None) is None:
            self._bc = load("bc.jpg", "RGB").astype(np.uint16)
        rgb = load(f"ori_imgs/{i}.jpg", "RGB")
        parsing = _nearest(self.root / f"parsing/{i}.png", size)
        head = ((parsing[..., 0] == 0) & (parsing[..., 1] == 0) & (parsing[..., 2] == 255)).astype(np.uint8)
        torso = load(f"torso_imgs/{i}.png", "RGBA").astype(np.uint16)
        alpha = torso[..., 3:]
        background = ((torso[..., :3] * alpha + self._bc * (255 - alpha) + 127) // 255).astype(np.uint8)
        return rgb, head, background

    def background_label(self, i: int) -> np.ndarray:
        """``[H, W]`` bool: the pixels that ``parsing/<i>.png`` labels background (white), at the training size."""
        return (_nearest(self.root / f"parsing/{i}.png", (self.width, self.height)) == 255).all(-1)

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`pixels_u8` as float32 in [0, 1]."""
        rgb, head, bg = self.pixels_u8(i)
        return rgb.astype(np.float32) / 255, head.astype(np.float32), bg.astype(np.float32) / 255


def _nearest(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A parsing image resized without blending its label colours (RGB order: head is (0, 0, 255))."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    return np.asarray(image if image.size == size else image.resize(size, Image.NEAREST))


def lip_boxes(lms: np.ndarray, width: int, height: int) -> torch.Tensor:
    """``[N, 4]`` (x0, y0, x1, y1) squared boxes around the 68-point lips (48-60), as the reference crops."""
    lips = lms[:, 48:60]
    lo, hi = lips.min(1), lips.max(1)
    c, half = (lo + hi) / 2, (hi - lo).max(1) / 2 * 1.2 + 2
    box = np.stack([c[:, 0] - half, c[:, 1] - half, c[:, 0] + half, c[:, 1] + half], 1)
    box = np.clip(np.round(box), 0, [width, height, width, height]).astype(np.int64)
    return torch.from_numpy(box)


def smooth_audio(windows: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, W, D]`` audio windows, each averaged with its neighbours up to ``k`` frames away (Gaussian weights,
    sigma ``k / 2``; the first and last windows repeat beyond the ends). ``k = 0`` returns them unchanged."""
    if k <= 0 or len(windows) < 2:
        return windows
    offsets = torch.arange(-k, k + 1)
    index = (torch.arange(len(windows))[:, None] + offsets[None]).clamp(0, len(windows) - 1)  # [N, 2k+1]
    return torch.einsum("nkwd,k->nwd", windows[index], smooth_weights(k).to(windows.dtype))


def smooth_weights(k: int) -> torch.Tensor:
    """The ``2k + 1`` weights of :func:`smooth_audio` (Gaussian, sigma ``k / 2``, summing to 1)."""
    offsets = torch.arange(-k, k + 1)
    weights = torch.exp(-0.5 * (offsets / (k / 2)) ** 2)
    return weights / weights.sum()


class SmoothWindows:
    """:func:`smooth_audio` on a stream (a live session's windows, :class:`being_core.live.WindowFilter`): the
    smoothed window of frame ``i`` comes out once the window of frame ``i + k`` is in, so it needs ``k`` frames
    more of audio. The same windows as offline except the last ``k`` (offline repeats the last window there; a
    stream has no last window)."""

    def __init__(self, k: int):
        self.k = self.frames_ahead = k
        self.weights = smooth_weights(k).numpy().astype(np.float32)
        self.kept: list[np.ndarray] = []  # windows from frame self.base on
        self.base = 0
        self.next = 0  # the next frame to give out

    def push(self, windows) -> np.ndarray:
        windows = np.asarray(windows, np.float32)
        self.kept.extend(windows)
        out = []
        while self.next + self.k < self.base + len(self.kept):
            near = [self.kept[max(self.next + j, 0) - self.base] for j in range(-self.k, self.k + 1)]
            out.append(np.tensordot(self.weights, np.stack(near), axes=1))
            self.next += 1
        drop = max(0, self.next - self.k - self.base)  # windows no frame to come needs
        del self.kept[:drop]
        self.base += drop
        return np.stack(out) if out else np.zeros((0, *windows.shape[1:]), np.float32)


class Frames(torch.utils.data.Dataset):
    """Frames by id, for a DataLoader: ``(id, image [H, W, 3], mask [H, W], background [H, W, 3])``, uint8."""

    def __init__(self, data: RunData, ids: list[int]):
        self.data, self.ids = data, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int):
        i = self.ids[k]
        rgb, head, bg = self.data.pixels_u8(i)
        return i, torch.from_numpy(rgb.copy()), torch.from_numpy(head.copy()), torch.from_numpy(bg.copy())


class FrameCache:
    """Every frame's pixels (image, head mask, background) as uint8 tensors on one device, decoded once by a
    DataLoader; ``n * H * W * 7`` bytes (1.8 GB for 1,800 frames at 512^2). A GPU trains up to twice as fast
    from it as from frames streamed through the loader's workers, which decode JPEG and PNG every step."""

    def __init__(self, data: RunData, ids: list[int], device: torch.device, workers: int, progress=None):
        h, w = data.height, data.width
        self.slot = torch.full((data.n,), -1, dtype=torch.long)
        self.slot[torch.as_tensor(ids)] = torch.arange(len(ids))
        self.image = torch.empty((len(ids), h, w, 3), dtype=torch.uint8, device=device)
        self.mask = torch.empty((len(ids), h, w), dtype=torch.uint8, device=device)
        self.background = torch.empty((len(ids), h, w, 3), dtype=torch.uint8, device=device)
        loader = torch.utils.data.DataLoader(Frames(data, ids), batch_size=32, num_workers=workers)
        bar = progress.task(f"trainer: frames to {device.type}", total=len(ids), unit="frame") if progress else None
        with bar or contextlib.nullcontext() as task:
            lo = 0
            for _, image, mask, bg in loader:
                hi = lo + len(image)
                self.image[lo:hi], self.mask[lo:hi], self.background[lo:hi] = (
                    t.to(device, non_blocking=True) for t in (image, mask, bg))
                lo = hi
                if task:
                    task.advance(len(image))

    @staticmethod
    def nbytes(data: RunData, n: int) -> int:
        return n * data.height * data.width * 7

    def batch(self, ids: torch.Tensor):
        """``(image, mask, background)`` uint8 for frame ids (which must be cached)."""
        k = self.slot[ids.cpu()]
        if (k < 0).any():
            raise KeyError(f"frames {ids[k < 0].tolist()} are not in the cache")
        k = k.to(self.image.device)
        return self.image[k], self.mask[k], self.background[k]

