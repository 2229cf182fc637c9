"""Frames per second of the `sd-turbo` refiner's diffusion pass, with a full-size pipeline of SD-turbo's
architecture and random weights (no weights can be downloaded; they make no difference to the time), fp16 on a
GPU, at 1 and 2 denoising steps and a few batch sizes (run by hand; results in docs/benchmarks.md).

Here:

    python -m benchmarks.sd_turbo_speed carry [--dest .gpu-sd]

writes DEST (ignored by git): wheels of being-core and the plugins for CPython 3.12, and diffusers with
importlib-metadata (the GPU image has torch, transformers, tokenizers, huggingface-hub and safetensors), and
prints the command to run there:

    PYTHONPATH=$PWD python3 -P -m benchmarks.sd_turbo_speed run $OUT --carried .gpu-sd

``run`` builds the pipeline (UNet of Stable Diffusion 2.1's shape, 865 M parameters; its autoencoder; a CLIP
text encoder of 1,024 wide and 23 layers over a few words' vocabulary, which runs once per stream), saves it as a
downloaded folder is saved, loads it through the refiner's own code (``Diffusion``), passes random 512² frames
with a head-shaped alpha through it, and writes OUT/sd_turbo_speed.json. ``--smoke`` does the same with the tests'
tiny pipeline on this machine's CPU at 64², to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DENOISING = (1, 2)
BATCHES = (1, 4, 8)


def carry(dest: Path) -> None:
    import importlib.metadata

    from tools.gpu import carry as base

    wheels = dest / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    base.download([f"{n}=={importlib.metadata.version(n)}" for n in ("diffusers", "importlib-metadata",
                                                                       *base.PACKAGES)], wheels)
    base.being_wheels(wheels)
    base.check_fits(dest)
    print(f'carry: ["{dest}"]; command:\nPYTHONPATH=$PWD python3 -P -m benchmarks.sd_turbo_speed run $OUT '
          f'--carried {dest}')


def install(carried: Path) -> None:
    """The carried wheels into /tmp/site, first on the path (once per machine)."""
    site = Path("/tmp/site")
    if not (site / "diffusers").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, sorted((carried / "whl").glob("*.whl")))], check=True)
    sys.path.insert(0, str(site))


def save_full_size_pipeline(folder: Path) -> Path:
    """SD-turbo's architecture (Stable Diffusion 2.1's UNet and autoencoder, a CLIP text encoder of its width and
    depth) with random weights, saved in fp16 as a downloaded folder; kept when it is already there."""
    import torch
    from being_refiner_sd_turbo.testing import save_tiny_pipeline
    from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if (folder / "model_index.json").is_file():
        return folder
    tiny = StableDiffusionImg2ImgPipeline.from_pretrained(str(save_tiny_pipeline(folder.parent / "tiny")),
                                                          local_files_only=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=tiny.tokenizer.vocab_size, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
        num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=0,
        eos_token_id=1, pad_token_id=1))
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tiny.tokenizer, unet=unet,
                                          scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False).to(torch.float16)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def head_alpha(n: int, size: int):
    """``[n, size, size]`` float alpha: an upright ellipse of a head in the middle of the frame."""
    import torch

    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return ((x / 0.45) ** 2 + ((y + 0.05) / 0.6) ** 2 <= 1).float().expand(n, size, size).clone()


def run(out: Path, carried: Path | None, smoke: bool) -> None:
    if carried is not None:
        install(carried)
    import torch
    from being_refiner_sd_turbo import SDTurboConfig
    from being_refiner_sd_turbo.diffuse import Diffusion
    from being_refiner_sd_turbo.testing import save_tiny_pipeline

    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if smoke else "cuda"
    size, repeats = (64, 2) if smoke else (512, 10)
    started = time.monotonic()
    folder = save_tiny_pipeline(Path("/tmp/sd-speed/tiny")) if smoke else save_full_size_pipeline(
        Path("/tmp/sd-speed/full"))
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores",
                    "model": "tiny (smoke)" if smoke else "SD-turbo's architecture, random weights, fp16",
                    "build_s": round(time.monotonic() - started, 1), "size": size, "runs": []}
    for steps in DENOISING:
        cfg = SDTurboConfig(model=str(folder), steps=2 * steps, strength=0.5, size=size,
                            dtype="float32" if smoke else "float16", device=device)
        started = time.monotonic()
        diffusion = Diffusion(cfg, device)
        loaded = time.monotonic() - started
        if not report.get("unet_parameters"):
            report["unet_parameters"] = sum(p.numel() for p in diffusion.pipe.unet.parameters())
        for batch in BATCHES:
            rgb = torch.rand(batch, size, size, 3, device=device)
            alpha = head_alpha(batch, size).to(device)
            for _ in range(2):  # warm-up: kernels chosen, memory taken
                diffusion(rgb, alpha)
            if device == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            for _ in range(repeats):
                diffusion(rgb, alpha)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - began
            row = {"denoising_steps": steps, "batch": batch, "frames_per_s": round(batch * repeats / seconds, 2),
                   "ms_per_batch": round(1000 * seconds / repeats, 2), "load_s": round(loaded, 1)}
            if device == "cuda":
                row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            report["runs"].append(row)
            print(row, flush=True)
        del diffusion
    (out / "sd_turbo_speed.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("carry")
    c.add_argument("--dest", type=Path, default=Path(".gpu-sd"))
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--carried", type=Path, help="the folder `carry` wrote (installed into /tmp/site)")
    r.add_argument("--smoke", action="store_true", help="the tests' tiny pipeline on this machine's CPU")
    args = ap.parse_args()
    if args.command == "carry":
        carry(args.dest)
    else:
        run(args.out, args.carried, args.smoke)


if __name__ == "__main__":
    main()
