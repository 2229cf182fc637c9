"""Put together what a GPU benchmark needs on a machine without network, mediapipe or ffmpeg (run by hand).

    python benchmarks/gpu_carry.py RUN [--dest .gpu]          # for benchmarks/gpu_quality.py
    python benchmarks/gpu_carry.py RUN --cli --audio A.wav [--dest .gpu]   # `being train` and `being render` there

Writes DEST/pack (the prepared run, packed by benchmarks/gpu_pack.py) and DEST/whl (gsplat and the core's
pure-Python needs that such a machine may lack, as CPython 3.12 manylinux wheels fetched with this machine's
pip settings), checks that the whole folder stays under the 64 MiB a device call carries, and prints the
command that installs the wheels there and runs benchmarks/gpu_quality.py. DEST is ignored by git
(`/.gpu/` in .gitignore); name it in the call's carry list.

``--cli`` carries what the real CLI needs instead: the run folder itself as DEST/run.tar.xz (use a short
clip: 64 MiB is little), wheels of being-core and every plugin, the audio encoder's librosa with the
packages it needs beyond the GPU image's, and imageio-ffmpeg with its ffmpeg binary xz-compressed beside it
(0.4.9's: the current wheel's binary is 172 MB), and the audio to render as DEST/audio.wav. The printed
command trains and renders with the in-process runner and copies metrics.json, val.mp4 and the rendered
video to $OUT.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE / "benchmarks")]

LIMIT = 64 * 2 ** 20
# gsplat, plus the core's imports that the GPU image lacks (it has torch, numpy, rich, pluggy, pyyaml, jaxtyping);
# not imageio-ffmpeg (68 MB): the GPU benchmarks replace the video writer
PACKAGES = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")
# --cli: what `being render` (mel features with librosa) and the video writer need beyond the GPU image (which
# has scipy, scikit-learn, numba, joblib, lazy_loader, msgpack); versions as installed here
CLI_PACKAGES = ("librosa", "soundfile", "soxr", "audioread", "pooch", "decorator", "cffi", "pycparser",
                "platformdirs", "requests", "urllib3", "idna", "charset-normalizer", "certifi")
FFMPEG = "imageio-ffmpeg==0.4.9"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux2010_x86_64", "manylinux1_x86_64", "any")


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    import gpu_pack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a prepared run folder (being prepare)")
    ap.add_argument("--dest", type=Path, default=HERE / ".gpu")
    ap.add_argument("--cli", action="store_true", help="carry the run folder and the CLI (see above)")
    ap.add_argument("--audio", type=Path, help="with --cli: the audio that `being render` gets there")
    args = ap.parse_args()
    if args.cli and not (args.audio and args.audio.is_file()):
        sys.exit(f"--cli needs --audio with an existing audio file (got {args.audio})")
    pack, wheels = args.dest / "pack", args.dest / "whl"
    names = PACKAGES + (CLI_PACKAGES if args.cli else ())
    pins = ["gsplat==1.5.3"] + [f"{name}=={importlib.metadata.version(name)}" for name in names]
    download(pins, wheels)
    if args.cli:
        carry_cli(args.run, args.dest, wheels)
        shutil.copyfile(args.audio, args.dest / "audio.wav")
    elif not (pack / "being.json").is_file():
        gpu_pack.pack(args.run, pack)
    total = size(args.dest)
    print(f"{args.dest}: {total / 2 ** 20:.1f} MiB (wheels {size(wheels) / 2 ** 20:.1f})")
    if total > LIMIT:
        sys.exit(f"{args.dest} is over the 64 MiB a device call carries")
    rel = args.dest.resolve().relative_to(HERE) if args.dest.resolve().is_relative_to(HERE) else args.dest
    install = f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {rel}/whl/*.whl"
    if args.cli:
        run = f"/tmp/{args.run.resolve().name}"
        print(f"carry: [\"{rel}\"]; command:\n"
              f"set -e; {install}; cp -r {rel}/py/imageio_ffmpeg /tmp/site/; python3 -c \"import lzma,shutil,tarfile;"
              f"shutil.copyfileobj(lzma.open('{rel}/ffmpeg.xz'),open('/tmp/ffmpeg','wb'));"
              f"tarfile.open('{rel}/run.tar.xz').extractall('/tmp')\"; chmod +x /tmp/ffmpeg; "
              f"export PYTHONPATH=/tmp/site IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg TORCH_CUDA_ARCH_LIST=9.0 "
              f"PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH; being train {run} > $OUT/train.log 2>&1; "
              f"being render {run} --audio {rel}/audio.wav -o $OUT/render.mp4 > $OUT/render.log 2>&1; "
              f"cp {run}/avatar/metrics.json {run}/avatar/val.mp4 {run}/being.json $OUT/")
        return
    print(f"carry: [\"{rel}\"]; command:\n"
          f"{install} && export PYTHONPATH=/tmp/site TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 && "
          f"python3 benchmarks/gpu_quality.py {rel}/pack $OUT base-s0:seed=0 base-s1:seed=1 base-s2:seed=2")


def download(pins: list[str], wheels: Path) -> None:
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(wheels), *pins],
                   check=True)


def carry_cli(run: Path, dest: Path, wheels: Path) -> None:
    """The run folder as run.tar.xz, wheels of the core and the plugins, imageio-ffmpeg as py/ + ffmpeg.xz."""
    import lzma
    import tarfile
    import tempfile
    import zipfile

    if not (run / "being.json").is_file():
        sys.exit(f"{run} is not a prepared run folder (no being.json)")
    sources = [HERE, *sorted(p for p in (HERE / "plugins").iterdir() if (p / "pyproject.toml").is_file())]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), *map(str, sources)], check=True)
    tmp = dest / "run.tar.xz.tmp"
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        tar.add(run, arcname=run.resolve().name)
    tmp.replace(dest / "run.tar.xz")
    with tempfile.TemporaryDirectory() as scratch:
        download([FFMPEG], Path(scratch))
        with zipfile.ZipFile(next(Path(scratch).glob("*.whl"))) as whl:
            whl.extractall(scratch)
        package = Path(scratch) / "imageio_ffmpeg"
        binary = next((package / "binaries").glob("ffmpeg-*"))
        with open(binary, "rb") as src, lzma.open(dest / "ffmpeg.xz", "wb", preset=9) as out:
            shutil.copyfileobj(src, out)
        binary.unlink()
        shutil.rmtree(dest / "py" / "imageio_ffmpeg", ignore_errors=True)
        shutil.copytree(package, dest / "py" / "imageio_ffmpeg")


if __name__ == "__main__":
    main()
