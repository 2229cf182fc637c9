"""Put together what a GPU benchmark needs on a machine without network, mediapipe or ffmpeg (run by hand).

    python benchmarks/gpu_carry.py RUN [--dest .gpu]

Writes DEST/pack (the prepared run, packed by benchmarks/gpu_pack.py) and DEST/whl (gsplat and the core's
pure-Python needs that such a machine may lack, as CPython 3.12 manylinux wheels fetched with this machine's
pip settings), checks that the whole folder stays under the 64 MiB a device call carries, and prints the
command that installs the wheels there and runs benchmarks/gpu_quality.py. DEST is ignored by git
(`/.gpu/` in .gitignore); name it in the call's carry list.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE / "benchmarks")]

LIMIT = 64 * 2 ** 20
# gsplat, plus the core's imports that the GPU image lacks (it has torch, numpy, rich, pluggy, pyyaml, jaxtyping);
# not imageio-ffmpeg (68 MB): the GPU benchmarks replace the video writer
PACKAGES = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any")


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    import gpu_pack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a prepared run folder (being prepare)")
    ap.add_argument("--dest", type=Path, default=HERE / ".gpu")
    args = ap.parse_args()
    pack, wheels = args.dest / "pack", args.dest / "whl"
    if not (pack / "being.json").is_file():
        gpu_pack.pack(args.run, pack)
    pins = ["gsplat==1.5.3"] + [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(wheels), *pins],
                   check=True)
    total = size(args.dest)
    print(f"{args.dest}: {total / 2 ** 20:.1f} MiB (pack {size(pack) / 2 ** 20:.1f}, wheels {size(wheels) / 2 ** 20:.1f})")
    if total > LIMIT:
        sys.exit(f"{args.dest} is over the 64 MiB a device call carries")
    rel = args.dest.resolve().relative_to(HERE) if args.dest.resolve().is_relative_to(HERE) else args.dest
    print(f"carry: [\"{rel}\"]; command:\n"
          f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {rel}/whl/*.whl && "
          f"export PYTHONPATH=/tmp/site TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 && "
          f"python3 benchmarks/gpu_quality.py {rel}/pack $OUT base-s0:seed=0 base-s1:seed=1 base-s2:seed=2")


if __name__ == "__main__":
    main()
