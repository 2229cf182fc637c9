"""The refiner stage on a real clip: every refiner fits on the trainer's replay, refines the held-out frames that
the trainer scores beside its own, refines a render of new speech, and changes nothing outside the head; the
same refiner in-process on tensors gives the same frames; `refiner: null` runs none of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import yaml
from being_refiner_sd_turbo import SDTurboConfig
from being_refiner_sd_turbo.folder import check_model
from being_refiner_sd_turbo.testing import save_tiny_pipeline
from being_refiner_unet import UNetConfig
from being_refiner_unet.fit import WEIGHTS, load
from being_refiner_unet.net import UNet, refine
from being_trainer_gaussian_avatar import GaussianAvatar
from pydantic import ValidationError

from being_core.config import resolve
from being_core.errors import ConfigError, StageFailed
from being_core.frames import frame_pairs, read_video
from being_core.ingest import probe
from being_core.manifest import Manifest, matches_any
from being_core.pipeline import Pipeline
from being_core.plugins import load_registry
from being_core.stage import REFINED_METRICS, REFINED_VAL, REPLAY_DIR, StageKind

REGISTRY = load_registry()
REFINERS = [i for i in REGISTRY.all() if i.cls.kind == StageKind.REFINER]
TINY = GaussianAvatar.test_config


@pytest.fixture(scope="module")
def trained(prepared_face5, tmp_path_factory):
    """prepared_face5 with the tiny trainer trained once (copied by each test)."""
    root = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(prepared_face5, root)
    Pipeline(root, _config(None), REGISTRY).train()
    return root


def _config(refiner: dict | None):
    stages = {"audio_encoder": {"impl": "mel"}, "trainer": {"impl": "gaussian-avatar", "config": TINY}}
    if refiner:
        stages["refiner"] = refiner
    return resolve({"stages": stages}, REGISTRY, "test config")


@pytest.fixture
def run(trained, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained, root)
    return root


@pytest.mark.parametrize("impl", REFINERS, ids=[i.cls.name for i in REFINERS])
def test_every_refiner_fits_is_scored_refines_a_render_and_keeps_the_rest(impl, run, tmp_path, being_testdata):
    cls = impl.cls
    config = cls.contract_config(tmp_path / "assets")
    pipeline = Pipeline(run, _config({"impl": cls.name, "config": config}), REGISTRY)
    pipeline.train()
    stages = Manifest.load(run).stages
    assert stages["trainer"]["metrics"]["steps"] == 18, "the trained avatar was reused, not retrained"
    assert pipeline.ran == ["trainer:replay", "refiner", "trainer:score"]
    entry = stages["refiner"]
    assert entry["impl"] == cls.name and all(matches_any(rel, cls.outputs) for rel in entry["outputs"])
    facts = pipeline.facts()
    replay = {rel for rel in stages["trainer:replay"]["outputs"]}
    assert replay == {f"{REPLAY_DIR}/{s}{a}.mkv" for s in ("train", "val") for a in ("", "_alpha")}
    refined = np.concatenate(list(read_video(run / REFINED_VAL)))
    rendered, alpha = (np.concatenate(x) for x in zip(*frame_pairs(run / f"{REPLAY_DIR}/val.mkv",
                                                                   run / f"{REPLAY_DIR}/val_alpha.mkv")))
    assert len(refined) == len(facts.val_ids) == 12 and refined.shape == rendered.shape
    # nothing changes farther than `dilate` pixels from the head's coverage
    near = torch.nn.functional.max_pool2d(torch.from_numpy(alpha > 0).float()[:, None], 2 * config["dilate"] + 1,
                                          stride=1, padding=config["dilate"])[:, 0].numpy() > 0
    assert (~near).sum() > 1000, "the test frames have pixels away from the head"
    assert np.array_equal(refined[~near], rendered[~near])
    assert not np.array_equal(refined[near], rendered[near]), "the refiner changed the head"
    # scored by the trainer on the same frames with the same protocols, beside its own
    scored = json.loads((run / REFINED_METRICS).read_text())
    assert scored == stages["trainer:score"]["metrics"]
    own = stages["trainer"]["metrics"]
    assert {k for k, v in own.items() if isinstance(v, float) and k.startswith(("psnr", "ssim"))} <= set(scored)
    assert scored["psnr_full_frame_ceiling"] == own["psnr_full_frame_ceiling"], "the same real frames"
    assert scored["flicker_real"] == own["flicker_real"] and scored["val_frames"] == 12

    # in-process, as the server will call it: uint8 arrays and tensors give the frames the file path gave
    refiner = cls().open(run, cls.Config.model_validate(config), "cpu")
    assert np.array_equal(refiner.refine_frames(rendered[:4], alpha[:4]), refined[:4])
    out = refiner(torch.from_numpy(rendered[4:8]).float() / 255, torch.from_numpy(alpha[4:8]).float() / 255)
    assert np.array_equal((out.clamp(0, 1) * 255).round().byte().numpy(), refined[4:8])

    # live (`being serve`): the run opens with its fitted refiner, which refines the avatar's live frames
    from being_core.live import open_run

    live = open_run(run, REGISTRY, "cpu")
    assert live.refiner_name == cls.name and live.refiner is not None
    avatar = live.avatar
    session = avatar.session(0)
    window = live.stream().push(np.zeros(32000, np.float32))[:2]
    raw, raw_alpha = avatar.render([session.step(0.0) for _ in range(2)], window, np.zeros(2, np.float32))
    served = live.refiner(raw, raw_alpha)
    assert served.shape == raw.shape and not torch.equal(served, raw)

    # a render of new speech goes through the refiner before the audio is muxed
    audio = being_testdata / "audio" / "videoretalking_audio1.wav"
    says = pipeline.render(audio, tmp_path / "says.mp4")
    stages = Manifest.load(run).stages
    assert pipeline.ran[-2:] == ["trainer:render", "refiner:refine"]
    sub = next(p for p in (run / "renders").iterdir() if p.is_dir())
    assert says.read_bytes() == (sub / "refined.mp4").read_bytes()
    n = stages["trainer:render"]["metrics"]["frames"]
    assert stages["refiner:refine"]["metrics"]["frames"] == n
    assert imageio_ffmpeg.count_frames_and_secs(str(says))[0] == n and probe(says).audio_codec == "aac"
    plain = np.concatenate(list(read_video(sub / "frames.mkv")))
    again = np.concatenate([refiner.refine_frames(*pair) for pair in frame_pairs(sub / "frames.mkv",
                                                                                  sub / "frames_alpha.mkv")])
    assert len(plain) == n and not np.array_equal(again, plain)
    # the same refiner, unchanged: nothing is fitted again, and `being train` shows both lines
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"stages": {"audio_encoder": {"impl": "mel"}, "trainer": {"impl": "gaussian-avatar", "config": TINY},
                    "refiner": {"impl": cls.name, "config": config}}}))
    proc = subprocess.run([sys.executable, "-m", "being_core", "train", str(run), "-c", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "refiner '" + cls.name + "': unchanged, skipped" in proc.stderr + proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("held-out metrics with refiner"))
    assert line.startswith(f"held-out metrics with refiner '{cls.name}': psnr {scored['psnr']} (")


@pytest.mark.parametrize("impl", REFINERS, ids=[i.cls.name for i in REFINERS])
def test_a_refiner_in_a_subprocess_equals_in_process(impl, trained, tmp_path, being_testdata):
    """The fit, the refined held-out frames and a refined render of new speech are the same files whether the
    refiner runs in-process or in a subprocess: frames cross the boundary as files, never as shared memory."""
    cls = impl.cls
    config = cls.contract_config(tmp_path / "assets")
    audio = being_testdata / "audio" / "videoretalking_audio1.wav"
    outputs = {}
    for runner in ("subprocess", "inprocess"):
        root = tmp_path / runner
        shutil.copytree(trained, root)
        pipeline = Pipeline(root, _config({"impl": cls.name, "config": config, "runner": runner}), REGISTRY)
        pipeline.train()
        pipeline.render(audio, tmp_path / f"{runner}.mp4")
        stages = Manifest.load(root).stages
        assert stages["refiner"]["runner"] == stages["refiner:refine"]["runner"] == runner
        files = sorted(stages["refiner"]["outputs"]) + [REFINED_VAL]
        sub = next(p for p in (root / "renders").iterdir() if p.is_dir())
        # videos by their frames (a Matroska file has a random segment id), weights by their values (a fit's float
        # sums differ in the last bits from one process to another), the rest byte for byte
        outputs[runner] = ({rel: _content(root / rel) for rel in files},
                           np.concatenate(list(read_video(sub / "refined.mp4"))))
    assert outputs["subprocess"][0].keys() == outputs["inprocess"][0].keys()
    for rel, data in outputs["inprocess"][0].items():
        there = outputs["subprocess"][0][rel]
        if isinstance(data, dict):
            assert data.keys() == there.keys() and all(np.allclose(there[k], v, rtol=1e-4, atol=1e-6)
                                                       for k, v in data.items()), rel
        else:
            assert np.array_equal(there, data) if isinstance(data, np.ndarray) else there == data, rel
    assert np.array_equal(outputs["subprocess"][1], outputs["inprocess"][1])


def _content(path):
    if path.suffix in (".mkv", ".mp4"):
        return np.concatenate(list(read_video(path)))
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    return path.read_bytes()


def test_without_a_refiner_nothing_is_replayed_and_a_render_is_the_trainer_s(run, tmp_path, being_testdata):
    pipeline = Pipeline(run, _config(None), REGISTRY)
    pipeline.train()
    says = pipeline.render(being_testdata / "audio" / "videoretalking_audio1.wav", tmp_path / "says.mp4")
    assert pipeline.ran == ["trainer:render"]
    stages = Manifest.load(run).stages
    assert not {"trainer:replay", "refiner", "trainer:score", "refiner:refine"} & set(stages)
    assert not list(run.rglob("*.mkv")) and not (run / "refiner").exists()
    sub = next(p for p in (run / "renders").iterdir() if p.is_dir())
    assert says.read_bytes() == (sub / "render.mp4").read_bytes()


def test_the_unet_starts_as_the_identity_and_its_fit_learns(run, tmp_path):
    torch.manual_seed(0)
    net = UNet(8, 3)
    rgb, alpha = torch.rand(2, 37, 50, 3), torch.rand(2, 37, 50)
    assert torch.equal(refine(net, rgb, alpha, 4), rgb), "zero-initialised: the input, bit for bit"
    config = {**UNetConfig(steps=150, batch_size=4, crop=48, width=8, levels=2, lr=3e-3).model_dump(), "log_every": 50}
    Pipeline(run, _config({"impl": "unet", "config": config}), REGISTRY).train()
    metrics = Manifest.load(run).stages["refiner"]["metrics"]
    assert metrics["steps"] == 150 and metrics["train_frames"] == 110
    assert metrics["loss_last"] < 0.9 * metrics["loss_first"], metrics
    net, dilate = load(run, torch.device("cpu"))
    assert dilate == config["dilate"] and net.levels == 2
    assert REGISTRY.get(StageKind.REFINER, "unet")().open(run, UNetConfig(**config), "cpu").bf16 is False, \
        "bf16 is for the GPU only"


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_the_unet_corrects_the_head_as_it_would_on_the_whole_frame(levels):
    """The network sees only the head's box (plus its reach): every pixel comes out as when the whole frame goes
    through it, for heads inside the frame, at its edges, and for none."""
    from being_refiner_unet.net import head_box, region
    from torch.nn import functional as F

    torch.manual_seed(levels)
    net = UNet(4, levels)
    for param in net.out.parameters():
        torch.nn.init.normal_(param, std=0.3)
    h, w_ = 330, 362  # not multiples of the network's grid: padded
    rgb = torch.rand(2, h, w_, 3)
    rows, cols = torch.arange(h)[:, None], torch.arange(w_)[None]
    heads = {"inside": (165, 180, 30, 40), "edge": (10, 350, 25, 30), "none": None}
    for name, head in heads.items():
        alpha = torch.zeros(2, h, w_)
        if head is not None:
            r, c, hr, hc = head
            alpha[0] = (((rows - r) / hr) ** 2 + ((cols - c) / hc) ** 2 < 1).float() * 0.9
            alpha[1] = alpha[0].roll(7, 1)
        w = region(alpha, 3)
        box = head_box(w, levels)
        if name == "inside":
            assert box[1] - box[0] < h and box[3] - box[2] < w_, box
        x = rgb.permute(0, 3, 1, 2)
        step = 2 ** (levels - 1)
        inp = F.pad(torch.cat([x, alpha[:, None]], 1), (0, (-w_) % step, 0, (-h) % step), mode="replicate")
        whole = torch.where(w > 0, (x + w * net(inp)[:, :, :h, :w_]).clamp(0, 1), x).permute(0, 2, 3, 1)
        with torch.no_grad():
            out = refine(net, rgb, alpha, 3)
        assert (out - whole).abs().max() < 1e-5, (name, box)
        assert torch.equal(out[w[:, 0] == 0], rgb[w[:, 0] == 0]), name


def test_lpips_joins_the_unet_fit_from_a_local_file_only(run, tmp_path):
    from test_trainer import _lpips_file

    config = {**UNetConfig(steps=4, batch_size=2, crop=32, width=4, levels=2).model_dump(), "log_every": 2}
    missing = tmp_path / "nope.pth"
    with pytest.raises(StageFailed, match=rf"stages\.refiner\.config\.lpips_weights: {missing} does not exist; LPIPS "
                                          r"weights are never downloaded"):
        Pipeline(run, _config({"impl": "unet", "config": {**config, "lpips_weights": str(missing)}}), REGISTRY).train()
    weights = _lpips_file(tmp_path / "lpips.pth")
    Pipeline(run, _config({"impl": "unet", "config": {**config, "lpips_weights": str(weights)}}), REGISTRY).train()
    assert Manifest.load(run).stages["refiner"]["metrics"]["lpips_in_loss"] is True


def test_unet_weights_that_are_missing_or_foreign_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"refiner/unet\.safetensors does not exist: fit the refiner first"):
        load(tmp_path, torch.device("cpu"))
    (tmp_path / WEIGHTS).parent.mkdir(parents=True)
    (tmp_path / WEIGHTS).write_bytes(b"\x80\x04 a pickle, say")
    with pytest.raises(ValueError, match=r"unet\.safetensors is not a safetensors file"):
        load(tmp_path, torch.device("cpu"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / WEIGHTS), metadata={"format": "other/1"})
    with pytest.raises(ValueError, match=r"is not weights of refiner 'unet' \(format 'other/1', want "
                                         r"'being-refiner-unet/1'\)"):
        load(tmp_path, torch.device("cpu"))


def test_sd_turbo_folder_problems_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=rf"the sd-turbo model folder {missing} does not exist; download"):
        check_model(missing)
    with pytest.raises(ValueError, match=r"is not a diffusers pipeline folder: it has no model_index\.json"):
        check_model(tmp_path)
    tiny = save_tiny_pipeline(tmp_path / "tiny")
    assert check_model(tiny) == tiny
    shutil.rmtree(tiny / "unet")
    for f in (tiny / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"tiny is incomplete: it lacks unet, vae/\*\.safetensors \(safetensors"):
        check_model(tiny)
    with pytest.raises(ValidationError, match="give the model folder's absolute path"):
        SDTurboConfig(model="models/sd-turbo")
    with pytest.raises(ValidationError, match=r"steps 2 x strength 0\.3 runs no denoising step"):
        SDTurboConfig(model=str(tiny), steps=2, strength=0.3)


def test_a_missing_model_folder_is_refused_before_anything_runs(run, tmp_path):
    missing = tmp_path / "sd-turbo"
    pipeline = Pipeline(run, _config({"impl": "sd-turbo", "config": {"model": str(missing)}}), REGISTRY)
    with pytest.raises(ConfigError) as err:
        pipeline.train()
    assert str(err.value) == (f"test config has 1 problem:\n  - stages.refiner.config: the sd-turbo model folder "
                              f"{missing} does not exist; download a Stable Diffusion image-to-image model once (e.g. "
                              "stabilityai/sd-turbo) and give its folder as stages.refiner.config.model")
    assert pipeline.ran == [] and "trainer:replay" not in Manifest.load(run).stages


def test_sd_turbo_gives_every_frame_the_same_noise(tmp_path):
    from being_refiner_sd_turbo import SDTurboRefiner

    config = SDTurboConfig.model_validate(SDTurboRefiner.contract_config(tmp_path))
    refiner = SDTurboRefiner().open(tmp_path, config, "cpu")
    rng = np.random.default_rng(0)
    frame = (rng.random((1, 64, 64, 3)) * 255).astype(np.uint8)
    alpha = np.zeros((1, 64, 64), np.uint8)
    alpha[:, 16:48, 16:48] = 255
    alone = refiner.refine_frames(frame, alpha)
    batch = refiner.refine_frames(np.concatenate([frame, frame[:, ::-1], frame]), np.concatenate([alpha] * 3))
    assert np.array_equal(batch[0], batch[2]) and np.array_equal(batch[0], alone[0])
    assert not np.array_equal(alone, frame)
    assert np.array_equal(alone[0, :10], frame[0, :10]), "rows far from the head stay as rendered"
