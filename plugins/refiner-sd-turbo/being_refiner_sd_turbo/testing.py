"""A tiny, randomly initialised Stable Diffusion image-to-image pipeline of the same classes as SD-turbo
(UNet2DConditionModel, AutoencoderKL, CLIP text model and tokenizer, Euler scheduler), saved the way a
downloaded one is, for tests. Built here, never downloaded."""

from __future__ import annotations

import json
from pathlib import Path


def save_tiny_pipeline(folder: Path) -> Path:
    """Save the tiny pipeline to ``folder`` (once; kept when it is already there) and return the folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    import torch

    torch.manual_seed(0)
    words = ["a", "sharp", "detailed", "photo", "of", "person's", "face", ","]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    spec = folder.parent / f".{folder.name}-vocab"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "vocab.json").write_text(json.dumps(vocab))
    (spec / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(spec / "vocab.json"), str(spec / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                        num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, sample_size=64)
    scheduler = EulerDiscreteScheduler(timestep_spacing="trailing", steps_offset=1)  # as SD-turbo's
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
