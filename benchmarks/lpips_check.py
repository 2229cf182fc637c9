"""The trainer's own LPIPS against the lpips package, on a machine where that package imports (run by hand;
result in docs/benchmarks.md).

    python -m benchmarks.lpips_check

Builds the package's ``LPIPS(net='alex')`` with its bundled linear weights and a random AlexNet (no download),
saves its state dict, loads that file with ``being_trainer_gaussian_avatar.perceptual.load_lpips`` and compares
the two networks' distances on random image pairs. On a GPU it also times LPIPS forward + backward for a batch
of 32 frames at 512x512, the fine stage's batch.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch


def official():
    import lpips
    import torchvision

    real = torchvision.models.alexnet

    # A compatibility shim for the lpips package, not for Being: torchvision dropped the `pretrained`
    # argument that lpips still passes. The backbone is random (pnet_rand); nothing is downloaded.
    def alexnet(pretrained=False, **kwargs):
        assert not pretrained, "this check never downloads AlexNet's weights"
        return real(weights=None, **kwargs)

    lpips.pretrained_networks.tv.alexnet = alexnet
    return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def main() -> None:
    from being_trainer_gaussian_avatar.perceptual import load_lpips

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    ref = official().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lpips.pth"
        torch.save(ref.state_dict(), path)
        ours = load_lpips(path, device)
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__}
    diffs = []
    for size in (64, 256, 512):
        a = torch.rand(8, size, size, 3, device=device)
        b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
        with torch.no_grad():
            theirs = ref(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), normalize=True).flatten()
            mine = ours(a, b)
        diffs.append({"size": size, "max_abs_diff": float((theirs - mine).abs().max()),
                      "mean_distance": float(theirs.mean())})
    out["compare"] = diffs
    if device.type == "cuda":
        a = torch.rand(32, 512, 512, 3, device=device, requires_grad=True)
        b = torch.rand(32, 512, 512, 3, device=device)

        def step():
            ours(a, b).mean().backward()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        out["forward_backward_ms_batch32_512"] = round((time.perf_counter() - t) / 20 * 1000, 2)
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
