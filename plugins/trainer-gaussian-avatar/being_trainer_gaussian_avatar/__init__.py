"""Being trainer ``gaussian-avatar``: an audio-driven 3D Gaussian head, our implementation of the
GaussianTalker method, trained on a prepared run and rendered for any new audio.

Training: a coarse stage (static Gaussians initialised from the tracked vertices, densify and prune, batch 1)
then a fine stage (tri-plane features + a transformer over audio, eye, camera and null tokens predicting
per-Gaussian offsets; batches of frames; L1 + D-SSIM + lip L1 + head-mask alpha loss). The audio width
``D`` and window ``W`` come from the run manifest, so any audio encoder works without code changes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from being_core import Resources, StageConfig, StageContext, StageReport, Trainer, hookimpl


class AvatarConfig(StageConfig):
    resolution: int | None = Field(None, ge=32, le=4096, description="Training/render width in pixels; null = dataset size.")
    coarse_iterations: int = Field(2000, ge=1, le=1_000_000, description="Static-Gaussian steps (batch 1).")
    fine_iterations: int = Field(1000, ge=0, le=1_000_000, description="Deformation steps (batch_size frames each); "
                                 "1,000 scored as well as 3,000 on the mouth and better on held-out PSNR, in less "
                                 "than half the time (docs/benchmarks.md, lip sync).")
    batch_size: int = Field(32, ge=1, le=1024, description="Frames per fine step.")
    densify_from: int = Field(200, ge=1, le=1_000_000, description="First coarse step that densifies.")
    densify_until: int = Field(1500, ge=1, le=1_000_000, description="Last coarse step that densifies.")
    densify_interval: int = Field(100, ge=1, le=100_000, description="Coarse steps between densify/prune passes.")
    densify_grad: float = Field(0.0002, gt=0, le=1, description="View-space gradient (NDC) that makes a Gaussian grow.")
    prune_opacity: float = Field(0.005, ge=0, lt=1, description="Gaussians below this opacity are removed.")
    init_extra: float = Field(0.5, ge=0, le=4, description="Extra random Gaussians around the face (hair, "
                                                            "ears, skull), as a share of the tracked vertices.")
    max_gaussians: int = Field(60000, ge=100, le=10_000_000, description="Upper bound on the number of Gaussians.")
    lr_means: float = Field(1.6e-4, gt=0, le=1, description="Position learning rate, times the head's extent.")
    lr_deformer: float = Field(1e-3, gt=0, le=1, description="Deformation network learning rate (tri-plane: x10).")
    lr_final: float = Field(1.0, gt=0, le=1, description="Fine-stage learning rates decay exponentially to this "
                            "fraction of their start.")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="Fine-stage exponential moving average of the "
                             "weights, used as the final model; 0 turns it off.")
    audio_smooth: int = Field(0, ge=0, le=16, description="Average each frame's audio window with its neighbours' "
                              "up to this many frames either way (Gaussian weights, sigma half of it); 0: off.")
    camera_token: bool = Field(True, description="Give the deformation transformer the frame's head pose; off, "
                               "it cannot tell training frames apart by their pose and must read the mouth from "
                               "the audio.")
    pose_noise: float = Field(0.0, ge=0, le=10, description="Fine stage: Gaussian noise of this standard deviation "
                              "(in units of the clip's own spread of each pose number) added to the deformer's pose "
                              "input of each training frame, so that it cannot tell a frame by its exact pose and "
                              "must read the mouth from the audio; 0: off (docs/benchmarks.md).")
    silence: Literal["model", "close", "close-audio", "close-mouth"] = Field(
        "close-mouth", description="In the pauses of new speech (render) and of the held-out frames: 'close-mouth' "
        "gives the deformer, there, the audio window of a training frame whose mouth is shut in silence (the most "
        "settled one; faded in and out over a few frames) and, for the Gaussians around the mouth only, that "
        "frame's pose input, so the mouth closes while the head keeps its place; 'close' gives the whole head that "
        "pose input (the head moves by a pixel or two, about 1 dB of held-out PSNR); 'close-audio' only the audio "
        "window (the mouth shuts less firmly); 'model' lets the deformer read the silence like any audio "
        "(docs/benchmarks.md).")
    width: int = Field(64, ge=8, le=1024, description="Feature width of the deformation transformer.")
    heads: int = Field(4, ge=1, le=64, description="Attention heads.")
    plane_resolution: int = Field(64, ge=4, le=1024, description="Tri-plane resolution.")
    plane_channels: int = Field(32, ge=1, le=512, description="Tri-plane channels per plane.")
    lambda_dssim: float = Field(0.2, ge=0, le=100, description="Weight of D-SSIM.")
    lambda_lip: float = Field(1.0, ge=0, le=100, description="Weight of the lip-box L1 (fine stage).")
    lambda_alpha: float = Field(0.1, ge=0, le=100, description="Weight of the head-mask alpha loss.")
    lambda_expr: float = Field(10.0, ge=0, le=1000, description="Weight of the expression loss (fine stage): at the "
                               "tracked head model's vertices, the deformation must move them as the model moved in "
                               "that frame (expression, jaw, eyelids; L1 in head units). 0: off (docs/benchmarks.md, "
                               "lip sync: the held-out mouth follows the real one better with it).")
    expr_points: int = Field(2048, ge=1, le=1_000_000, description="Head model vertices the expression loss samples "
                             "per step.")
    lpips_weights: str | None = Field(
        None, description="A local file with LPIPS (AlexNet) weights, the state dict of the lpips package's "
        "LPIPS(net='alex'); never downloaded. When set, the fine stage adds lambda_lpips x LPIPS and the "
        "held-out metrics include lpips. null: no LPIPS.")
    lambda_lpips: float = Field(0.01, ge=0, le=100, description="Weight of LPIPS in the fine stage (with lpips_weights).")
    alpha_band: int = Field(0, ge=0, le=256, description="Pixels just outside the head mask, up to this distance (in "
                            "pixels of a 512-wide frame, scaled to the training width), are left out of the alpha "
                            "loss: hair fringe that the parsing calls background. 0 turns it off.")
    target: Literal["frame", "composite"] = Field(
        "frame", description="What a rendered frame is compared with in training: 'frame' is the real frame; "
        "'composite' is the real head over the frame's background (torso over bc.jpg), GaussianTalker's "
        "target and the one its held-out PSNR (this trainer's `psnr`) uses.")
    backend: Literal["auto", "gsplat", "reference"] = Field(
        "auto", description="Rasteriser: gsplat on CUDA, the PyTorch reference on CPU; 'auto' picks.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes the GPU when there is one.")
    frame_cache: Literal["auto", "off", "device"] = Field(
        "auto", description="'device' decodes every frame once into memory on the training device (7 bytes "
        "per pixel per frame); 'off' streams them from disk; 'auto' caches on a GPU when it takes at most "
        "a quarter of the free GPU memory.")
    num_workers: int = Field(-1, ge=-1, le=256, description="Data-loader workers; -1 = min(8, cores / 2).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed (same seed, same data, same device: same run).")
    log_every: int = Field(50, ge=1, le=1_000_000, description="Steps between progress/TensorBoard updates.")
    checkpoint_every: int = Field(500, ge=1, le=1_000_000, description="Steps between resumable checkpoints.")
    tensorboard: bool = Field(True, description="Write TensorBoard logs when tensorboard is installed.")
    render_batch: int = Field(16, ge=1, le=1024, description="Frames per rendering batch.")


class GaussianAvatar(Trainer[AvatarConfig]):
    """Audio-driven 3D Gaussian avatar (GaussianTalker method): gsplat on CUDA, PyTorch on CPU."""

    name = "gaussian-avatar"
    version = "0.1.0"
    needs_gpu = True
    inputs = ("ori_imgs/*.jpg", "ori_imgs/*.lms", "parsing/*.png", "torso_imgs/*.png", "bc.jpg",
              "track_params.pt", "face/landmarks.npy", "aud_*.npy")
    optional_inputs = ("au.csv", "aud.wav")
    outputs = ("avatar/model.pt", "avatar/metrics.json", "avatar/val.mp4")
    optional_outputs = ("avatar/tb/*",)
    requires = ("landmarks:facemesh-478", "dataset:reference-layout", "dataset:split")
    #: hands its frames to a refiner: replay, lossless frames beside a render, score
    provides = ("trainer:frames",)
    #: render reads what training read (the poses, the backgrounds, the training features' statistics) and the
    #: model; so do replay (the run's own frames, for a refiner) and score (a refiner's held-out frames)
    actions = {"render": Trainer.render_action(inputs=(*inputs, "avatar/model.pt")),
               "replay": Trainer.replay_action(inputs=(*inputs, "avatar/model.pt")),
               "score": Trainer.score_action(inputs=(*inputs, "avatar/model.pt"))}
    #: how to render, not what is trained: changing them never retrains
    action_settings = {"render": ("silence", "render_batch"), "replay": ("render_batch",)}
    headline_metrics = ("val_frames", "psnr", "ssim", "lpips", "lmd", "mouth_corr", "mouth_bias_pct", "av_offset",
                        "shut_closed", "silent_closed", "flicker")
    render_headline_metrics = ("frames", "silent_frames", "silent_closed", "envelope_corr")

    @classmethod
    def resources(cls, config: AvatarConfig) -> Resources:
        """A GPU unless told to use the CPU ('auto' also trains, slower, without one); two CPUs for loading."""
        return Resources.for_device(config.device, cpus=2.0)
    test_config = {"resolution": 64, "coarse_iterations": 12, "fine_iterations": 6, "batch_size": 2,
                   "densify_from": 5, "densify_interval": 5, "densify_until": 11, "log_every": 3,
                   "num_workers": 0, "tensorboard": False, "plane_resolution": 16}

    def run(self, ctx: StageContext[AvatarConfig]) -> StageReport:
        from .train import train

        metrics = train(ctx, ctx.config)
        return StageReport(metrics={k: v for k, v in metrics.items() if k != "history"},
                           info={"model": "avatar/model.pt", "gaussians": metrics["gaussians"]})

    def render(self, ctx: StageContext[AvatarConfig]) -> StageReport:
        from .render import render

        return StageReport(metrics=render(ctx, ctx.config))

    def live(self, ctx: StageContext[AvatarConfig], device: str | None = None):
        from .live import LiveAvatar

        return LiveAvatar(ctx, ctx.config, device)

    def replay(self, ctx: StageContext[AvatarConfig]) -> StageReport:
        from .render import replay

        return StageReport(metrics=replay(ctx, ctx.config))

    def score(self, ctx: StageContext[AvatarConfig]) -> StageReport:
        from .evaluate import score

        return StageReport(metrics=score(ctx, ctx.config))


@hookimpl
def being_register_stages(registry):
    registry.add(GaussianAvatar)
