"""trainer 'gaussian-avatar' on the CPU: the reference rasteriser against analytic cases and finite
differences, training on a real clip, the audio width from the encoder's info, rendering, resume."""

import json
import math
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from being_trainer_gaussian_avatar import AvatarConfig, GaussianAvatar
from being_trainer_gaussian_avatar.avatar import Avatar
from being_trainer_gaussian_avatar.data import RunData
from being_trainer_gaussian_avatar.losses import losses
from being_trainer_gaussian_avatar.model import Deformer
from being_trainer_gaussian_avatar.raster import EPS2D, rasterize_pairs, rasterize_reference

from being_core import DatasetFacts
from being_core.audio import AudioFeatures
from being_core.config import resolve
from being_core.ingest import probe
from being_core.manifest import Manifest
from being_core.pipeline import Pipeline

TINY = GaussianAvatar.test_config


def camera(f=100.0, size=32):
    view = torch.eye(4, dtype=torch.float64)[None]
    K = torch.tensor([[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]], dtype=torch.float64)
    return view, K


def splat(means, scales, opac, colours, size=32, quats=None):
    view, K = camera(size=size)
    n = means.shape[0]
    quats = quats if quats is not None else torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    return rasterize_reference(means[None], quats[None], scales[None], opac[None], colours[None], view, K,
                               size, size)


def test_one_gaussian_footprint_is_analytic():
    z, sigma, f = 2.0, 0.05, 100.0
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    rgb, alpha, m2d = splat(means, torch.full((1, 3), sigma, dtype=torch.float64),
                            torch.tensor([0.8], dtype=torch.float64), torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64))
    assert torch.allclose(m2d[0, 0], torch.tensor([16.0, 16.0], dtype=torch.float64))
    var = (f * sigma / z) ** 2 + EPS2D
    for (py, px) in [(16, 16), (15, 18), (20, 10)]:
        d2 = (px + 0.5 - 16) ** 2 + (py + 0.5 - 16) ** 2
        expected = 0.8 * math.exp(-0.5 * d2 / var)
        expected = expected if expected >= 1 / 255 else 0.0
        assert alpha[0, py, px, 0].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert rgb[0, py, px].tolist() == pytest.approx([expected, expected * 0.5, expected * 0.25])


def test_compositing_is_front_to_back():
    scales = torch.full((2, 3), 0.2, dtype=torch.float64)
    opac = torch.tensor([0.9, 0.9], dtype=torch.float64)
    red_blue = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    near_red = torch.tensor([[0.0, 0, 2.0], [0.0, 0, 3.0]], dtype=torch.float64)
    rgb, alpha, _ = splat(near_red, scales, opac, red_blue)
    a_front = rgb[0, 16, 16, 0].item()
    a_back = rgb[0, 16, 16, 2].item()
    assert a_front > 0.85 and a_back == pytest.approx((1 - a_front) * 0.9, rel=0.05)
    rgb2, _, _ = splat(near_red.flip(0), scales, opac, red_blue)  # blue now in front
    assert rgb2[0, 16, 16, 2] > 0.85 and rgb2[0, 16, 16, 0] < 0.15
    assert alpha[0, 16, 16, 0].item() == pytest.approx(1 - 0.1 * 0.1, rel=0.01)


def test_without_gradients_the_pairs_draw_what_the_tiles_draw():
    """Renders (no gradients) take the pairs rasteriser; it leaves out only what lies beyond 3 sigma of a Gaussian
    whose tile the tiled one shares (alpha under 1.1 % of its opacity)."""
    torch.manual_seed(3)
    n, size = 400, 48
    means = torch.randn(n, 3, dtype=torch.float64) * 0.15
    means[:, 2] += 1.5
    quats = torch.randn(n, 4, dtype=torch.float64)
    scales = torch.rand(n, 3, dtype=torch.float64) * 0.03 + 0.002
    opac, colours = torch.rand(n, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64)
    view, K = camera(f=60.0, size=size)
    args = (means[None], quats[None], scales[None], opac[None], colours[None], view, K, size, size)
    with torch.enable_grad():
        tiled, tiled_alpha, _ = rasterize_reference(*args)
    pairs, pairs_alpha, _ = rasterize_pairs(*args)
    assert tiled_alpha.mean() > 0.15  # the picture has something in it
    assert (pairs - tiled).abs().max() < 0.02 and (pairs - tiled).abs().mean() < 1e-3
    assert (pairs_alpha - tiled_alpha).abs().max() < 0.02
    with torch.no_grad():
        assert torch.equal(rasterize_reference(*args)[0], pairs)


def test_the_deformer_without_gradients_gives_the_training_offsets():
    """Rendering reuses the per-Gaussian queries (they depend on the canonical means and the weights only); the
    offsets are those of the training path, and a change of the weights is seen."""
    torch.manual_seed(0)
    d = Deformer(-torch.ones(3), torch.ones(3), audio_dim=29, audio_window=16, plane_resolution=16)
    for p in d.parameters():
        torch.nn.init.normal_(p, std=0.2)
    means = torch.rand(3000, 3) * 2 - 1
    audio, eye, cam = torch.randn(3, 16, 29), torch.rand(3), torch.randn(3, 6)
    with torch.no_grad():
        fast = d(means, audio, eye, cam)
    assert torch.allclose(fast, d(means, audio, eye, cam), atol=1e-6)
    with torch.no_grad():
        d.query[0].weight.add_(0.05)  # in place, as an optimiser steps
        moved = d(means, audio, eye, cam)
    assert not torch.allclose(moved, fast, atol=1e-3)
    assert torch.allclose(moved, d(means, audio, eye, cam), atol=1e-6)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    means = torch.tensor([[0.02, -0.03, 2.0], [-0.05, 0.04, 2.4], [0.06, 0.05, 2.2]], dtype=torch.float64)
    log_scales = torch.log(torch.tensor([[0.08, 0.06, 0.07], [0.1, 0.09, 0.08], [0.07, 0.1, 0.09]], dtype=torch.float64))
    quats = torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, 0.0, 0.3, 0.1], [1.0, -0.2, 0.0, 0.1]], dtype=torch.float64)
    opac = torch.tensor([0.5, 0.6, 0.4], dtype=torch.float64)
    colours = torch.rand(3, 3, dtype=torch.float64)
    weights = torch.rand(1, 16, 16, 3, dtype=torch.float64)

    def f(m, ls, q, o, c):
        rgb, alpha, _ = splat(m, ls.exp(), o, c, size=16, quats=q)
        return (rgb * weights).sum() + alpha.sum()

    args = [t.clone().requires_grad_(True) for t in (means, log_scales, quats, opac, colours)]
    assert torch.autograd.gradcheck(f, args, eps=1e-7, atol=1e-5, rtol=1e-3)


@pytest.fixture(scope="module")
def data(prepared_face5):
    manifest = json.loads((prepared_face5 / "being.json").read_text())
    features = AudioFeatures.from_info(manifest["stages"]["audio_encoder"]["info"])
    return RunData(prepared_face5, DatasetFacts.model_validate(manifest["dataset"]), features, 64)


def test_a_few_steps_reduce_the_loss_on_a_real_clip(data):
    torch.manual_seed(0)
    cfg = AvatarConfig(**{**TINY, "init_extra": 0.2})
    av = Avatar(data, cfg, torch.device("cpu"))
    ids = torch.tensor([0, 40, 80])
    frames = [data.pixels(i) for i in ids.tolist()]
    image, mask, bg = (torch.from_numpy(np.stack([f[k] for f in frames])) for k in range(3))

    def loss():
        rgb, alpha, _ = av.render(ids, bg, deform=False)
        return losses(rgb, alpha, image, mask, data.lips[ids], cfg, fine=False)[0]

    opt = av.optimizer(fine=False)
    before = loss().item()
    for _ in range(25):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * before


def test_trains_renders_and_follows_the_audio_width(prepared_copy, being_run_stage, tmp_path, being_testdata):
    from being_audio_wav2vec2.testing import save_tiny_model

    # mel (D=80) first, then a wav2vec2 model (D=44): the trainer's input layer follows the encoder's info.
    entry = being_run_stage(prepared_copy, "trainer", "gaussian-avatar", TINY)
    model = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)
    assert model["audio"] == {"encoder": "mel", "dim": 80, "window": 16, "file": "aud_mel.npy"}
    assert model["model"]["deformer"]["audio.0.weight"].shape == (TINY.get("width", 64), 80)
    metrics = json.loads((prepared_copy / "avatar" / "metrics.json").read_text())
    assert metrics["val_frames"] == 12 and metrics["psnr"] > 8 and metrics["steps"] == 18
    # how the real clip's mouth follows its own speech: this clip is in sync
    assert metrics["clip_av_offset_frames"] is not None and abs(metrics["clip_av_offset_frames"]) <= 1.5
    assert entry["metrics"]["backend"] == "rasterize_reference"
    assert imageio_ffmpeg.count_frames_and_secs(str(prepared_copy / "avatar" / "val.mp4"))[0] == 12

    tiny = save_tiny_model(tmp_path / "w2v", "wav2vec2")
    being_run_stage(prepared_copy, "audio_encoder", "wav2vec2", {"model": tiny})
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", TINY)
    model = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)
    assert model["audio"]["dim"] == 44 and model["audio"]["encoder"] == "wav2vec2"
    assert model["model"]["deformer"]["audio.0.weight"].shape[1] == 44

    # Render new audio (5.02 s, 44.1 kHz stereo): frames follow the audio, whose stream is muxed in.
    registry = __import__("being_core.plugins", fromlist=["load_registry"]).load_registry()
    resolved = resolve({"stages": {"trainer": {"impl": "gaussian-avatar", "config": TINY}}}, registry)
    audio = being_testdata / "audio" / "videoretalking_audio1.wav"
    out = Pipeline(prepared_copy, resolved, registry).render(audio, tmp_path / "says.mp4")
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == round(5.02 * 25) or abs(frames - 5.02 * 25) <= 1
    info = probe(out)
    assert info.audio_codec == "aac" and abs(info.duration_s - 5.02) < 0.15
    sub = Manifest.load(next((prepared_copy / "renders").iterdir()))
    assert sub.stages["audio_encoder"]["impl"] == "wav2vec2", "render encodes with the run's own encoder"
    rendered = Manifest.load(prepared_copy).stages["trainer:render"]["metrics"]
    assert rendered["frames"] == frames and isinstance(rendered["envelope_corr"], float)
    assert rendered["silent_frames"] >= 0 and "silent_closed" in rendered


def test_checkpoints_resume_the_same_run(prepared_copy, being_run_stage, monkeypatch):
    from being_trainer_gaussian_avatar import train as train_module

    from being_core.errors import StageFailed

    real = train_module.evaluate

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(train_module, "evaluate", crash)
    with pytest.raises(StageFailed):
        being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**TINY, "checkpoint_every": 6})
    monkeypatch.setattr(train_module, "evaluate", real)
    entry = being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**TINY, "checkpoint_every": 6})
    assert entry["metrics"]["resumed_from_step"] == 18 and entry["metrics"]["steps"] == 18


def test_same_seed_same_avatar(prepared_copy, being_run_stage):
    config = {**TINY, "fine_iterations": 2, "coarse_iterations": 6}
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", config)
    first = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)["model"]
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", config, force=True)
    second = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)["model"]
    for part in ("gaussians", "deformer"):
        for name, value in first[part].items():
            assert torch.equal(value, second[part][name]), f"{part}.{name}"


def test_frames_cached_on_the_device_train_the_same_avatar(prepared_copy, being_run_stage):
    config = {**TINY, "fine_iterations": 2, "coarse_iterations": 6}
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**config, "frame_cache": "off"})
    streamed = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)["model"]
    streamed_metrics = json.loads((prepared_copy / "avatar" / "metrics.json").read_text())
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**config, "frame_cache": "device"}, force=True)
    cached = torch.load(prepared_copy / "avatar" / "model.pt", weights_only=True)["model"]
    cached_metrics = json.loads((prepared_copy / "avatar" / "metrics.json").read_text())
    for part in ("gaussians", "deformer"):
        for name, value in streamed[part].items():
            assert torch.equal(value, cached[part][name]), f"{part}.{name}"
    for key in ("psnr", "psnr_gt_imgs", "psnr_full_frame", "psnr_full_frame_ceiling", "ssim", "ssim_full_frame"):
        assert cached_metrics[key] == streamed_metrics[key], key
    # A perfect head scores the ceiling against the real frames; the rendered one scores less. Against the
    # real head over the frame's background (GaussianTalker's ground truth) the error the background alone
    # causes is gone, and likewise where gt_imgs shows bc.jpg.
    assert cached_metrics["psnr_full_frame"] < cached_metrics["psnr_full_frame_ceiling"]
    assert cached_metrics["psnr"] > cached_metrics["psnr_full_frame"]
    assert cached_metrics["psnr_gt_imgs"] > cached_metrics["psnr_full_frame"]


class _Output:
    def __init__(self, folder):
        self.folder = folder

    def output(self, rel):
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def test_held_out_protocols_score_a_perfect_head_exactly(data, tmp_path):
    """An avatar that renders exactly the real head over the frame's background: perfect by GaussianTalker's
    protocol (psnr capped at 100 dB, SSIM 1), and at the ceiling against the real frames."""
    from being_trainer_gaussian_avatar.evaluate import evaluate
    from being_trainer_gaussian_avatar.losses import composite

    class PerfectHead:
        device = torch.device("cpu")

        def render(self, ids, bg, deform, **inputs):  # its own head whatever the inputs
            frames = [data.pixels(i) for i in ids.tolist()]
            image, head = (torch.from_numpy(np.stack([f[k] for f in frames])) for k in range(2))
            return composite(image, head, bg), None, None

    m = evaluate(_Output(tmp_path), PerfectHead(), data)
    assert m["val_frames"] == len(data.val_ids) == 12
    assert m["psnr"] == 100.0 and m["ssim"] == 1.0
    assert m["psnr_full_frame"] == m["psnr_full_frame_ceiling"] < 60
    assert m["psnr_gt_imgs"] > m["psnr_full_frame"]
    assert m["ssim_full_frame"] < 1.0
    # the mouth is the real mouth (only the background differs, which moves FaceMesh's points by a fraction of a
    # pixel): in sync, unbiased, following the speech as the real one does
    assert m["mouth_corr"] > 0.98 and abs(m["mouth_bias_pct"]) < 3 and m["lmd"] < 0.5 and m["av_offset"] == 0, m
    assert abs(m["envelope_corr"] - m["envelope_corr_real"]) < 0.05, m
    assert (tmp_path / "avatar" / "val.mp4").stat().st_size > 0


def test_the_composite_target_replaces_everything_but_the_head(data):
    """target: composite trains against the real head over the frame's background: outside the head mask
    the loss sees the background the avatar is rendered over, so a render of that background costs nothing
    there, whatever the real frame shows."""
    from being_trainer_gaussian_avatar.losses import composite

    frames = [data.pixels(i) for i in (0, 50)]
    image, head, bg = (torch.from_numpy(np.stack([f[k] for f in frames])) for k in range(3))
    target = composite(image, head, bg)
    inside, outside = head > 0, head == 0
    assert inside.any() and outside.any()
    assert torch.equal(target[inside], image[inside]) and torch.equal(target[outside], bg[outside])
    assert not torch.equal(image[outside], bg[outside]), "the real frame differs from its background estimate"


def test_the_alpha_band_frees_only_pixels_just_outside_the_head():
    cfg, banded = AvatarConfig(**{**TINY, "alpha_band": 0}), AvatarConfig(**{**TINY, "alpha_band": 64})  # 2 px of 16
    mask = torch.zeros(1, 16, 16)
    mask[:, 5:11, 5:11] = 1
    rgb = image = torch.zeros(1, 16, 16, 3)
    lips = torch.tensor([[0, 0, 4, 4]])
    base = torch.where(mask[..., None] > 0, 0.99, 0.01)
    spill = base.clone()
    spill[:, 3:5, 5:11] = 0.99  # alpha spills 2 px above the mask: inside the band
    far = base.clone()
    far[:, 0:2, 5:11] = 0.99  # 3-5 px above the mask: beyond the band

    def alpha_loss(c, alpha):
        return losses(rgb, alpha, image, mask, lips, c, fine=False)[1]["alpha"].item()

    assert alpha_loss(banded, spill) == pytest.approx(alpha_loss(banded, base))
    assert alpha_loss(cfg, spill) > alpha_loss(cfg, base) + 0.01
    assert alpha_loss(banded, far) > alpha_loss(banded, base) + 0.01


def test_training_compares_with_the_target_the_config_names(prepared_copy, being_run_stage, monkeypatch):
    from being_trainer_gaussian_avatar import evaluate as evaluate_module
    from being_trainer_gaussian_avatar import train as train_module

    calls = []
    real = train_module.composite
    for module in (train_module, evaluate_module):  # the training loop's and the evaluation's
        monkeypatch.setattr(module, "composite", lambda *a: calls.append(len(a[0])) or real(*a))
    config = {**TINY, "fine_iterations": 2, "coarse_iterations": 6, "frame_cache": "off"}
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", config)
    assert calls == [12], "target 'frame': only the held-out evaluation builds the composite (12 val frames)"
    calls.clear()
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**config, "target": "composite"}, force=True)
    assert calls == [1] * 6 + [2] * 2 + [12], "every coarse (batch 1) and fine (batch 2) step, then evaluation"


def _lpips_file(path):
    """A random-init LPIPS saved as the lpips package saves one (its lin weights are non-negative)."""
    from being_trainer_gaussian_avatar.perceptual import LPIPS

    torch.manual_seed(0)
    net = LPIPS()
    with torch.no_grad():
        for lin in net.lins:
            lin.model[1].weight.abs_()
    torch.save(net.state_dict(), path)
    return path


def test_lpips_loads_the_lpips_package_layout_and_measures_distortion(tmp_path):
    from being_trainer_gaussian_avatar.perceptual import load_lpips

    weights = _lpips_file(tmp_path / "lpips.pth")
    state = torch.load(weights, weights_only=True)
    # The lpips package's LPIPS(net='alex') names: AlexNet's features indices inside five slices, lin0-4 (and
    # the same layers again as lins.0-4), and the input scaling buffers.
    expected = {"scaling_layer.shift", "scaling_layer.scale"}
    expected |= {f"net.slice{k}.{i}.{p}" for k, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10)) for p in ("weight", "bias")}
    expected |= {f"{name}.model.1.weight" for k in range(5) for name in (f"lin{k}", f"lins.{k}")}
    assert set(state) == expected
    net = load_lpips(weights, torch.device("cpu"))
    torch.manual_seed(1)
    image = torch.rand(2, 64, 64, 3)
    noise = torch.randn_like(image)
    near, far = ((image + s * noise).clamp(0, 1) for s in (0.02, 0.2))
    assert net(image, image).tolist() == [0.0, 0.0]
    assert (0 < net(image, near)).all() and (net(image, near) < net(image, far)).all()
    assert torch.allclose(net(image, far), net(far, image))
    assert not any(p.requires_grad for p in net.parameters())


def test_lpips_weights_that_are_missing_or_wrong_give_clear_errors(tmp_path):
    from being_trainer_gaussian_avatar.perceptual import load_lpips

    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError) as err:
        load_lpips(missing, torch.device("cpu"))
    assert str(err.value) == (f"stages.trainer.config.lpips_weights: {missing} does not exist; LPIPS weights are "
                              "never downloaded. Save them where they are available: "
                              "torch.save(lpips.LPIPS(net='alex').state_dict(), 'lpips.pth')")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError) as err:
        load_lpips(other, torch.device("cpu"))
    assert str(err.value).startswith(f"stages.trainer.config.lpips_weights: {other} is not an LPIPS AlexNet state "
                                     "dict (missing: scaling_layer.shift, scaling_layer.scale, net.slice1.0.weight, "
                                     "net.slice1.0.bias; unexpected: conv.weight)")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"lpips_weights: {garbage} is not a saved state dict"):
        load_lpips(garbage, torch.device("cpu"))


def test_lpips_joins_the_fine_loss_and_the_held_out_metrics(prepared_copy, being_run_stage, tmp_path):
    from being_trainer_gaussian_avatar.perceptual import load_lpips

    weights = _lpips_file(tmp_path / "lpips.pth")
    net = load_lpips(weights, torch.device("cpu"))
    cfg = AvatarConfig(**{**TINY, "lpips_weights": str(weights)})
    rgb, image = torch.rand(2, 32, 32, 3), torch.rand(2, 32, 32, 3)
    alpha, mask, lips = torch.full((2, 32, 32, 1), 0.5), torch.ones(2, 32, 32), torch.tensor([[8, 8, 24, 24]] * 2)
    coarse = losses(rgb, alpha, image, mask, lips, cfg, fine=False, perceptual=net)
    fine = losses(rgb, alpha, image, mask, lips, cfg, fine=True, perceptual=net)
    assert "lpips" not in coarse[1] and fine[1]["lpips"] > 0
    assert fine[0] == pytest.approx((coarse[0] + fine[1]["lip_l1"] + 0.01 * fine[1]["lpips"]).item())

    config = {**TINY, "fine_iterations": 2, "coarse_iterations": 6}
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", config)
    assert json.loads((prepared_copy / "avatar" / "metrics.json").read_text())["lpips"] is None
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**config, "lpips_weights": str(weights)}, force=True)
    assert 0 < json.loads((prepared_copy / "avatar" / "metrics.json").read_text())["lpips"] < 1


class _Payload:
    """Unpickling this writes a file: what a crafted model.pt or checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_a_crafted_model_or_checkpoint_is_refused_and_runs_nothing(prepared_copy, being_run_stage, tmp_path,
                                                                    being_testdata):
    from being_trainer_gaussian_avatar.data import load_tensors

    from being_core.errors import StageFailed

    marker = tmp_path / "marker.txt"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"model": _Payload(marker), "step": 1}, crafted)
    with pytest.raises(ValueError) as err:
        load_tensors(crafted, "the training checkpoint")
    assert str(err.value).startswith("the training checkpoint holds more than tensors and plain values; refusing "
                                     "to load it, since loading could run code from it (")
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**TINY, "fine_iterations": 2, "coarse_iterations": 6})
    torch.save({"model": _Payload(marker), "width": 64}, prepared_copy / "avatar" / "model.pt")
    registry = __import__("being_core.plugins", fromlist=["load_registry"]).load_registry()
    resolved = resolve({"stages": {"trainer": {"impl": "gaussian-avatar", "config": TINY}}}, registry)
    with pytest.raises(StageFailed) as err:
        Pipeline(prepared_copy, resolved, registry).render(being_testdata / "audio" / "geneface_zozo.wav",
                                                           tmp_path / "says.mp4")
    assert str(err.value).startswith("trainer 'gaussian-avatar' failed: ValueError: avatar/model.pt holds more than "
                                     "tensors and plain values; refusing to load it")
    assert not marker.exists() and not (tmp_path / "says.mp4").exists()


def test_audio_smoothing_averages_neighbouring_windows_only():
    from being_trainer_gaussian_avatar.data import smooth_audio

    windows = torch.zeros(9, 2, 3)
    windows[4] = 1.0
    assert torch.equal(smooth_audio(windows, 0), windows)
    out = smooth_audio(windows, 2)
    assert torch.allclose(out.sum(0), windows.sum(0))  # nothing lost away from the ends
    assert out[4, 0, 0] > out[3, 0, 0] == out[5, 0, 0] > out[2, 0, 0] == out[6, 0, 0] > 0
    assert out[1].abs().sum() == 0 and out[7].abs().sum() == 0  # beyond k frames: untouched
    flat = torch.ones(5, 2, 3)
    assert torch.allclose(smooth_audio(flat, 3), flat)


@pytest.mark.parametrize("k", [1, 3])
def test_smoothing_a_stream_of_windows_equals_smoothing_them_offline(k):
    """A live session's windows, pushed in chunks of any size (none too), smoothed as training smoothed them:
    the same windows except the last k, each given out once the window k frames later is in."""
    from being_trainer_gaussian_avatar.data import SmoothWindows, smooth_audio

    windows = torch.randn(40, 4, 3, generator=torch.Generator().manual_seed(k))
    stream, got, pushed = SmoothWindows(k), [], 0
    for size in [0, 1, 5, 0, 2, 9, 1, 13, 9]:
        out = stream.push(windows[pushed:pushed + size].numpy())
        pushed += size
        assert out.shape[1:] == (4, 3) and len(got) + len(out) == max(0, pushed - k)
        got.extend(out)
    assert stream.frames_ahead == k and len(stream.kept) <= 2 * k + 1, "only the windows still needed are kept"
    offline = smooth_audio(windows, k)[:40 - k].numpy()
    assert np.allclose(np.stack(got), offline, atol=1e-6)


def test_without_the_camera_token_the_deformer_never_sees_the_pose(data):
    av = Avatar(data, AvatarConfig(**{**TINY, "camera_token": False}), torch.device("cpu"))
    seen = {}

    def spy(means, audio, eye, camera):
        seen["camera"] = camera
        return torch.zeros(len(audio), len(means), 14)

    av.deformer.forward = spy
    av.render(torch.tensor([0, 5]), None, deform=True)
    assert seen["camera"].abs().sum() == 0


def test_pose_noise_jitters_the_training_poses_only(prepared_copy, being_run_stage, monkeypatch):
    """``pose_noise``: in the fine stage each training frame's pose input gets Gaussian noise of that size (the
    render and the expression loss of a step the same noisy pose); the coarse stage has no deformer to give it
    to, and the held-out frames are rendered at their own poses."""
    from being_trainer_gaussian_avatar import avatar as avatar_module

    renders, motions = [], []
    real_render, real_motion = avatar_module.Avatar.render, avatar_module.Avatar.motion

    def render(self, ids, bg, deform, **given):
        renders.append((deform, ids.cpu().clone(), given.get("camera")))
        return real_render(self, ids, bg, deform, **given)

    def motion(self, ids, vertices, camera=None):
        motions.append(camera)
        return real_motion(self, ids, vertices, camera)

    monkeypatch.setattr(avatar_module.Avatar, "render", render)
    monkeypatch.setattr(avatar_module.Avatar, "motion", motion)
    being_run_stage(prepared_copy, "trainer", "gaussian-avatar", {**TINY, "pose_noise": 0.5})
    manifest = json.loads((prepared_copy / "being.json").read_text())
    features = AudioFeatures.from_info(manifest["stages"]["audio_encoder"]["info"])
    data = RunData(prepared_copy, DatasetFacts.model_validate(manifest["dataset"]), features, TINY["resolution"])
    coarse, fine = TINY["coarse_iterations"], TINY["fine_iterations"]
    assert all(not deform and cam is None for deform, _, cam in renders[:coarse])
    steps = renders[coarse:coarse + fine]
    assert all(deform and cam is not None for deform, _, cam in steps) and len(motions) == fine
    noise = torch.cat([cam - data.camera[ids] for _, ids, cam in steps])
    assert 0.25 < float(noise.std()) < 0.9 and abs(float(noise.mean())) < 0.3, noise  # 72 draws of N(0, 0.5)
    assert all(torch.equal(m, cam) for m, (_, _, cam) in zip(motions, steps))  # one pose per frame in a step
    held_out = [(ids, cam) for _, ids, cam in renders[coarse + fine:]]
    assert held_out and all(cam is None or torch.equal(cam, data.camera[ids]) for ids, cam in held_out)


def test_the_input_shares_tell_which_input_the_mouth_follows(data):
    """``benchmarks.deformer_inputs``: a deformer whose offsets follow only the pose input gives the pose a share
    of 1 and the audio and the eyes 0; one that follows only the audio, the other way round; one that adds both,
    a share to each. Without the camera token the pose cannot count."""
    from benchmarks.deformer_inputs import input_shares

    av = Avatar(data, AvatarConfig(**TINY), torch.device("cpu"))

    level = data.audio.flatten(1).mean(1)

    def follows(pose: float, audio: float):  # the first pose number, and the audio's level (both standardised)
        def forward(means, audio_in, eye, camera):
            out = torch.zeros(len(audio_in), len(means), 14)
            loud = (audio_in.flatten(1).mean(1) - level.mean()) / level.std()
            out[..., 0], out[..., 1] = pose * camera[:, :1], audio * loud[:, None]
            return out
        return forward

    av.deformer.forward = follows(1.0, 0.0)
    shares = input_shares(av, data)
    assert (shares["pose"], shares["audio"], shares["eye"]) == (1.0, 0.0, 0.0) and shares["mouth_gaussians"] > 0
    av.deformer.forward = follows(0.0, 1.0)
    shares = input_shares(av, data)
    assert (shares["pose"], shares["audio"], shares["eye"]) == (0.0, 1.0, 0.0)
    av.deformer.forward = follows(1.0, 1.0)
    shares = input_shares(av, data)
    assert 0.2 < shares["pose"] < 1 and 0.2 < shares["audio"] < 1 and shares["eye"] == 0, shares
    blind = Avatar(data, AvatarConfig(**{**TINY, "camera_token": False}), torch.device("cpu"))
    blind.deformer.forward = follows(1.0, 1.0)
    assert input_shares(blind, data)["pose"] == 0.0


def test_silence_close_gives_the_pauses_a_shut_training_frame(data, caplog):
    import logging

    from being_trainer_gaussian_avatar import lipsync
    from being_trainer_gaussian_avatar.render import FADE, close_in_pauses, shut_reference

    from being_core.audio import SAMPLE_RATE

    found = shut_reference(data)
    ref = found.frame
    assert ref in data.train_ids
    lm = np.load(data.root / "face" / "landmarks.npy")[:, lipsync.MOUTH, :2]
    assert lipsync.opening(lm)[ref] < lipsync.CLOSED
    assert found.how.startswith("shut in a pause") or found.how.startswith("the quietest shut frame")
    n = 100  # 4 s of loud noise with a pause of frames 40 to 69
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal(n * SAMPLE_RATE // 25)).astype(np.float32)
    samples[40 * 640:70 * 640] = 0
    audio, camera = torch.randn(n, *data.audio.shape[1:]), torch.randn(n, data.camera.shape[1])

    class Ctx:
        log = logging.getLogger("test")

    class Gaussians:  # an avatar whose Gaussians sit at the head model's vertices
        gauss = type("Gaussians", (), {"means": data.points})
        device = torch.device("cpu")

    means = data.points
    with caplog.at_level(logging.INFO, logger="test"):
        quiet = lipsync.pauses(lipsync.loudness(samples, SAMPLE_RATE, n, 25.0), 25.0, edge=0)
        only = close_in_pauses(data, Ctx, audio, camera, quiet, "close-audio")
        shut = close_in_pauses(data, Ctx, audio, camera, quiet, "close")
        mouth = close_in_pauses(data, Ctx, audio, camera, quiet, "close-mouth", Gaussians)
    assert f"close-audio: 30 of 100 frames are in pauses; they take the audio inputs of training frame {ref} " \
           f"({found.how})" in caplog.text
    assert f"they take the audio and pose inputs of training frame {ref} ({found.how})" in caplog.text
    assert f"close-mouth: 30 of 100 frames are in pauses; they take the audio inputs (and, around the mouth, pose " \
           f"input) of training frame {ref}" in caplog.text
    inside = slice(40 + FADE, 70 - FADE)
    assert torch.allclose(only.audio[inside], data.audio[ref].expand_as(only.audio[inside]))
    assert torch.equal(only.camera, camera) and only.mouth is None  # close-audio: the head keeps its own pose
    assert torch.equal(shut.audio, only.audio) and shut.mouth is None  # close: the same audio, the shut pose too
    assert torch.allclose(shut.camera[inside], data.camera[ref].expand_as(shut.camera[inside]))
    # close-mouth: the frames' own pose, and the shut one for the Gaussians around the mouth
    assert torch.equal(mouth.audio, only.audio) and torch.equal(mouth.camera, camera)
    assert torch.equal(mouth.mouth[0], shut.camera) and mouth.mouth[1].shape == (len(means),)
    outside = [*range(0, 40 - FADE), *range(70 + FADE, n)]
    assert torch.equal(only.audio[outside], audio[outside]) and torch.equal(shut.camera[outside], camera[outside])
    fading = only.audio[40 - FADE:40 + FADE + 1]  # in between: neither the speech nor the reference
    assert not torch.allclose(fading, audio[40 - FADE:40 + FADE + 1])
    # a batch of frames out of the pause deforms once, one that reaches into it with both poses
    assert "mouth" not in mouth.part(slice(0, 40 - FADE)) and "mouth" in mouth.part(slice(30, 50))
    with pytest.raises(ValueError, match="close-mouth needs the avatar's Gaussians"):
        close_in_pauses(data, Ctx, audio, camera, quiet, "close-mouth")


def test_the_mouth_region_is_the_lips_of_the_shut_frame_fading_out(data):
    """close-mouth's weights: the Gaussians that the shut frame's camera shows inside its lip box take all of its
    pose, those beyond twice the box none, those behind the camera none; in between they fade."""
    from being_trainer_gaussian_avatar.render import MOUTH_REACH, mouth_weight

    frame = data.train_ids[0]
    means = data.points
    weight = mouth_weight(data, frame, means)
    view, k = data.viewmats[frame], data.Ks[frame]
    cam = means @ view[:3, :3].T + view[:3, 3]
    uv = (cam @ k.T)[:, :2] / (cam @ k.T)[:, 2:]
    x0, y0, x1, y1 = data.lips[frame].tolist()
    inside = (uv[:, 0] > x0) & (uv[:, 0] < x1) & (uv[:, 1] > y0) & (uv[:, 1] < y1)
    assert inside.sum() > 20 and torch.all(weight[inside] == 1)
    half = torch.tensor([x1 - x0, y1 - y0]) / 2
    far = ((uv - torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])).abs() / half).amax(1) > MOUTH_REACH
    assert far.sum() > 100 and torch.all(weight[far] == 0)  # the upper head: its own pose (at 64 px the lip
    # box, padded by 2 px, is half the face wide)
    assert ((weight > 0) & (weight < 1)).sum() > 20  # a band that fades
    # the head model's lips are where the tracked landmarks put them: the weighted vertices surround the box's centre
    centre = (uv * weight[:, None]).sum(0) / weight.sum()
    assert ((centre - torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])).abs() < half).all()
    behind = means[inside][:1] - 2 * (view[:3, :3].T @ (cam[inside][:1].T))[:, 0]  # mirrored through the camera
    assert mouth_weight(data, frame, behind)[0] == 0


def test_the_mouth_takes_the_other_pose_by_its_weight(data):
    """Avatar.render's ``mouth``: each Gaussian deformed as with the mouth's pose input by its weight (0: as the
    frame's own pose, 1: as the other), with the audio and eyes the same."""
    av = Avatar(data, AvatarConfig(**TINY), torch.device("cpu"))
    n = len(av.gauss)

    def by_pose(means, audio, eye, camera):  # offsets that follow the pose input
        out = torch.zeros(len(audio), len(means), 14)
        out[..., :3] = 0.01 * camera[:, None, :3]
        return out

    av.deformer.forward = by_pose
    ids = torch.tensor([0, 5])
    own, other = data.camera[ids], data.camera[ids].flip(0) + 1.0

    def render(**given):
        return av.render(ids, None, deform=True, **given)[0]

    assert torch.equal(render(camera=own, mouth=(other, torch.zeros(n))), render(camera=own))
    assert torch.allclose(render(camera=own, mouth=(other, torch.ones(n))), render(camera=other), atol=1e-6)
    half = render(camera=own, mouth=(other, torch.full((n,), 0.5)))
    assert torch.allclose(half, render(camera=(own + other) / 2), atol=1e-6)  # offsets linear in the pose here


def test_held_out_frames_close_in_the_clips_pauses_as_a_render_does(prepared_copy, tmp_path, caplog):
    """With silence: close the held-out frames are rendered as `being render` renders their speech: the pauses,
    found over the whole clip's speech (here a pause that the held-out stretch alone, quiet throughout, would not
    call one), take the shut training frame's inputs; with silence: model every frame keeps its own."""
    import logging
    import wave

    from being_trainer_gaussian_avatar import lipsync
    from being_trainer_gaussian_avatar.evaluate import evaluate
    from being_trainer_gaussian_avatar.losses import composite
    from being_trainer_gaussian_avatar.render import FADE, shut_reference

    from being_core.audio import SAMPLE_RATE

    manifest = json.loads((prepared_copy / "being.json").read_text())
    facts = DatasetFacts.model_validate(manifest["dataset"])
    per_frame = SAMPLE_RATE // 25
    val = np.array(facts.val_ids)
    assert len(val) == 12 and val[-1] == facts.n_frames - 1
    # loud noise (-10 dB) up to the held-out frames, whose first 4 frames are at -30 dB and last 8 at -40 dB:
    # 30 dB under the clip's loud level is a pause; 10 dB under the stretch's own loud level is not
    rng = np.random.default_rng(0)
    level = np.full(facts.n_frames, 0.3)
    level[val[:4]], level[val[4:]] = 0.03, 0.003
    samples = np.repeat(level, per_frame) * rng.standard_normal(facts.n_frames * per_frame)
    with wave.open(str(prepared_copy / "aud.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    stretch = lipsync.loudness(samples[val[0] * per_frame:].astype(np.float32), SAMPLE_RATE, 12, 25.0)
    assert not lipsync.pauses(stretch, 25.0, edge=0).any()
    features = AudioFeatures.from_info(manifest["stages"]["audio_encoder"]["info"])
    data = RunData(prepared_copy, facts, features, 64)
    ref = shut_reference(data).frame
    given: list[dict] = []

    class Recorder:  # renders the real head, and keeps the deformer inputs it was given
        device = torch.device("cpu")
        gauss = type("Gaussians", (), {"means": data.points})  # at the head model's vertices

        def render(self, ids, bg, deform, **inputs):
            given.append(inputs)
            frames = [data.pixels(i) for i in ids.tolist()]
            image, head = (torch.from_numpy(np.stack([f[k] for f in frames])) for k in range(2))
            return composite(image, head, bg), None, None

    class Ctx:
        log = logging.getLogger("test")

        @staticmethod
        def output(rel):
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            return path

    with caplog.at_level(logging.INFO, logger="test"):
        m = evaluate(Ctx, Recorder(), data, silence="close")
    assert m["silence"] == "close"
    assert f"8 of 12 frames are in pauses; they take the audio and pose inputs of training frame {ref}" in caplog.text
    audio = torch.cat([g["audio"] for g in given])
    camera = torch.cat([g["camera"] for g in given])
    assert not any("mouth" in g for g in given)
    assert torch.equal(audio[:4 - FADE], data.audio[val[:4 - FADE]])  # speech: the frames' own
    full = slice(4 + FADE, 12 - FADE)  # deep in the pause: the shut frame's
    assert torch.allclose(audio[full], data.audio[ref].expand_as(audio[full]))
    assert torch.allclose(camera[full], data.camera[ref].expand_as(camera[full]))
    # the metrics count the clip's pauses too (less 2 frames at each end of this one)
    assert m["silent_frames"] == 4 and m["silent_closed"] == m["silent_closed_real"], m
    given.clear()
    assert evaluate(Ctx, Recorder(), data, silence="close-audio")["silence"] == "close-audio"
    assert torch.equal(torch.cat([g["audio"] for g in given]), audio)
    assert torch.equal(torch.cat([g["camera"] for g in given]), data.camera[val])  # the head's pose: its own
    given.clear()
    assert evaluate(Ctx, Recorder(), data, silence="close-mouth")["silence"] == "close-mouth"
    assert torch.equal(torch.cat([g["camera"] for g in given]), data.camera[val])
    assert len(given) == 1  # one batch of 12, reaching into the pause: deformed with both poses
    shut, weight = given[0]["mouth"]
    assert torch.allclose(shut[full], data.camera[ref].expand_as(shut[full])) and len(weight) == len(data.points)
    given.clear()
    assert evaluate(Ctx, Recorder(), data)["silence"] == "model"  # every frame its own inputs
    assert torch.equal(torch.cat([g["audio"] for g in given]), data.audio[val])
    assert torch.equal(torch.cat([g["camera"] for g in given]), data.camera[val])
    assert not any("mouth" in g for g in given)


def test_the_pauses_reference_is_a_mouth_that_stays_shut_not_one_about_to_open():
    from being_trainer_gaussian_avatar.render import SHUT_MARGIN, most_settled, widest_opening

    assert SHUT_MARGIN == 2
    #                  0     1     2      3      4      5      6      7      8     9     10
    opening = np.array([0.3, 0.2, 0.04, 0.003, 0.001, 0.002, 0.004, 0.002, 0.03, 0.2, 0.001])
    shut = np.array([2, 3, 4, 5, 6, 7, 8, 10])
    # 5 stays shut from 3 to 7 (widest 0.004); 4 and 6 see 0.04 and 0.03 (within the tie of 0.01 of each other,
    # not of 5's); 2, 3, 7 and 8 border an open mouth; 10 is the clip's last frame
    assert most_settled(opening, shut).tolist() == [5]
    opening[[3, 7]] = 0.011  # 4, 5, 6: widest 0.04, 0.011, 0.03; only 5 within 0.01 of the smallest
    assert most_settled(opening, shut).tolist() == [5]
    opening[[2, 8]] = 0.005  # 4, 5, 6: widest 0.011 each
    assert most_settled(opening, shut).tolist() == [4, 5, 6]
    opening[7] = np.nan  # a frame without a face counts as open
    assert most_settled(opening, shut).tolist() == [4]
    # no frame stays shut that long: every candidate stays in
    flicker = np.array([0.001, 0.3, 0.001, 0.3, 0.001])
    assert most_settled(flicker, np.array([0, 2, 4])).tolist() == [0, 2, 4]
    assert widest_opening(flicker).tolist() == [np.inf, np.inf, 0.3, np.inf, np.inf]  # the ends count as open


def test_densifying_keeps_the_optimiser_state_of_surviving_gaussians(data):
    from being_trainer_gaussian_avatar.densify import densify_and_prune

    cfg = AvatarConfig(**TINY)
    av = Avatar(data, cfg, torch.device("cpu"))
    opt = av.optimizer(fine=False)
    g = av.gauss
    n = len(g)
    for p in g.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the state
    marks = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    opt.state[g.means]["exp_avg"] = marks.expand(n, 3).clone()  # row i carries i + 1
    means_before = g.means.detach().clone()
    with torch.no_grad():
        g.opacity_logits[:5] = -20  # transparent: pruned
    grad = torch.zeros(n)
    grad[10:40] = 1.0  # grows: cloned or split
    info = densify_and_prune(av, grad, torch.ones(n), cfg, opt)
    assert info["cloned"] + info["split"] == 30 and info["count"] == len(g) != n

    assert [group["params"][0] for group in opt.param_groups] == [g.means, g.log_scales, g.quats, g.opacity_logits,
                                                                   g.colour_logits]
    state = opt.state[g.means]
    rows = state["exp_avg"][:, 0]
    kept = rows > 0
    old = rows[kept].long() - 1
    assert torch.equal(state["exp_avg"][kept], marks[old].expand(-1, 3)), "each survivor keeps its own moments"
    assert torch.equal(g.means[kept].detach(), means_before[old]), "... and is the Gaussian it was"
    assert not (old < 5).any(), "the pruned are gone"
    assert set(range(5, 10)) <= set(old.tolist()) and (rows[~kept] == 0).all(), "new Gaussians start from zero"
    assert int(kept.sum()) == n - 5 - info["split"] and len(g) - int(kept.sum()) == info["cloned"] + 2 * info["split"]
    assert int(state["step"]) == 1 and state["exp_avg_sq"].shape == g.means.shape
    for p in g.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # the optimiser works on the new tensors


def test_the_expression_loss_teaches_the_deformation_the_tracked_motion(data):
    """``lambda_expr``: at the head model's mean vertices, the deformation of a frame learns to move them as the
    tracked model moved in that frame."""
    cfg = AvatarConfig(**{**TINY, "lambda_expr": 10.0})
    av = Avatar(data, cfg, torch.device("cpu"))
    assert data.expression.shape == (data.n, len(data.points), 3)
    assert float(data.expression.float().abs().mean()) > 1e-4  # the face moves in this clip
    opt = av.optimizer(fine=True)
    ids = torch.as_tensor(data.train_ids[:8])
    vertices = torch.arange(0, len(data.points), 7)
    target = data.expression[ids][:, vertices].float()

    def error() -> float:
        with torch.no_grad():
            return float((av.motion(ids, vertices) - target).abs().mean())

    before = error()
    assert before == pytest.approx(float(target.abs().mean()))  # the deformer starts at rest
    for _ in range(150):
        loss = (av.motion(ids, vertices) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < 0.7 * before


def test_head_motion_from_the_training_frames_a_still_pose_or_a_file(data, tmp_path):
    from being_trainer_gaussian_avatar.render import head_motion, typical_frame

    class Ctx:
        @staticmethod
        def input(rel):
            return tmp_path / rel

    ids, view, camera = head_motion(data, "train", 300, Ctx)
    assert view is None and set(ids.tolist()) == set(data.train_ids) and ids[0] == 0 and ids[len(data.train_ids)] != 0
    ids, view, camera = head_motion(data, "still", 30, Ctx)
    assert (ids == typical_frame(data)).all() and torch.equal(camera, data.camera[torch.as_tensor(ids)])
    own = torch.cat([data.euler, data.trans], 1)[20:40].numpy()  # the clip's own poses, as a user's file
    np.save(tmp_path / "poses.npy", own)
    ids, view, camera = head_motion(data, "poses.npy", 20, Ctx)
    assert torch.allclose(view, data.viewmats[20:40], atol=1e-5)
    assert torch.allclose(camera, data.camera[20:40], atol=1e-4) and ids.tolist() == list(range(20, 40))
    np.save(tmp_path / "bad.npy", own[:, :5])
    with pytest.raises(ValueError) as err:
        head_motion(data, "bad.npy", 20, Ctx)
    assert str(err.value) == ("the pose file bad.npy holds an array of shape [20, 5] (float32); it must be [T, 6] "
                              "finite numbers: Euler angles (radians) and translation, as in track_params.pt")


def test_blinks_from_the_track_a_natural_schedule_or_none(data):
    from being_trainer_gaussian_avatar.render import blinks

    ids = np.arange(100) % len(data.train_ids)
    assert torch.equal(blinks(data, "track", ids, 0), data.eye[torch.as_tensor(ids)])
    still = blinks(data, "none", np.zeros(1500, int), 0)
    assert still.unique().numel() == 1
    natural = blinks(data, "natural", np.zeros(1500, int), 0)  # one minute at 25 fps
    starts = ((natural[1:] > still[0] + 1e-6) & (natural[:-1] <= still[0] + 1e-6)).sum()
    assert 10 <= int(starts) <= 30 and natural.max() > still[0]
    assert torch.equal(natural, blinks(data, "natural", np.zeros(1500, int), 0))
    assert not torch.equal(natural, blinks(data, "natural", np.zeros(1500, int), 1))
