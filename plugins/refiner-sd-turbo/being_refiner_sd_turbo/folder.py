"""The model folder a user brings, checked without importing diffusers (before anything runs)."""

from __future__ import annotations

import json
from pathlib import Path

#: the components an image-to-image Stable Diffusion folder must hold, and which of them carry weights
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")


def check_model(folder: Path) -> Path:
    """``folder`` when it is a complete local diffusers Stable Diffusion folder with safetensors weights; else a
    ValueError that names the folder and what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"the sd-turbo model folder {folder} does not exist; download a Stable Diffusion "
                         "image-to-image model once (e.g. stabilityai/sd-turbo) and give its folder as "
                         "stages.refiner.config.model")
    index = folder / "model_index.json"
    try:
        listed = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{index} cannot be read as JSON: {exc}") from None
    missing = [c for c in COMPONENTS if c not in listed or not (folder / c).is_dir()]
    missing += [f"{c}/*.safetensors" for c in WEIGHTED if c not in missing
                and not any((folder / c).glob("*.safetensors"))]
    if missing:
        raise ValueError(f"{folder} is incomplete: it lacks {', '.join(missing)} (safetensors weights only; "
                         "download the whole model folder)")
    return folder
