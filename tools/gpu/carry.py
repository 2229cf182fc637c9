"""Put together what Being needs on a GPU box without network, mediapipe or ffmpeg (run by hand).

    python -m tools.gpu.carry RUN [--dest .gpu]                      # then benchmarks.gpu_quality there
    python -m tools.gpu.carry RUN --folds [--more RUN2] [--dest .gpu]  # the same over every stretch (benchmarks.folds)
    python -m tools.gpu.carry RUN --trainer-benchmark [--dest .gpu]  # then benchmarks.gpu_trainer there
    python -m tools.gpu.carry RUN --refiner-benchmark [--dest .gpu]  # then benchmarks.refiner --throughput there
    python -m tools.gpu.carry RUN --cli --audio A.wav [--dest .gpu]  # then `being train` and `being render`

Writes into DEST: wheels of being-core and every plugin (installed there with ``--no-deps``: what they import
lazily, such as mediapipe, is never loaded on that path), gsplat and the core's pure-Python needs that such a
machine may lack (CPython 3.12 manylinux wheels fetched with this machine's pip settings), imageio-ffmpeg with
its ffmpeg binary xz-compressed beside it (0.4.9's: the current wheel's binary is 172 MB) so the trainer
writes its videos as everywhere else, and the run: packed by ``tools/gpu/pack.py`` for the benchmarks, or the
run folder itself as ``run.tar.xz`` with ``--cli`` (use a short clip: 64 MiB is little), plus the audio to
render. It prints what to carry and the command to run there: one call when the whole folder fits the 64 MiB
a device call carries (less the checkout), else two on one warm machine (the wheels and ffmpeg, then at once the
packs). The benchmarks' videos come back re-encoded, tarred and cut in parts (``results.tar.*``). DEST is
ignored by git (``/.gpu/``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools.gpu import pack as packing

CHECKOUT = Path.cwd()
LIMIT = 64 * 2 ** 20
#: what the checkout itself takes of a call's 64 MiB (its tracked files, about 3.2 MiB), with room to grow
TREE = 5 * 2 ** 20
# gsplat, plus the core's imports that the GPU image lacks (it has torch, numpy, rich, pluggy, pyyaml, jaxtyping), and
# safetensors (refiner weights)
PACKAGES = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "safetensors")
# --cli: what `being render` (mel features with librosa) needs beyond the GPU image (which has scipy,
# scikit-learn, numba, joblib, lazy_loader, msgpack); versions as installed here
CLI_PACKAGES = ("librosa", "soundfile", "soxr", "audioread", "pooch", "decorator", "cffi", "pycparser",
                "platformdirs", "requests", "urllib3", "idna", "charset-normalizer", "certifi")
# --refiner-benchmark: what the live path's mel stream imports (librosa.filters, not its audio I/O)
LIVE_PACKAGES = ("librosa", "pooch", "decorator", "cffi", "pycparser", "platformdirs")
FFMPEG = "imageio-ffmpeg==0.4.9"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux2010_x86_64", "manylinux1_x86_64", "any")


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_fits(dest: Path, detail: str = "") -> None:
    """Print what ``dest`` weighs; exit when it is over the 64 MiB a device call carries."""
    total = size(dest)
    print(f"{dest}: {total / 2 ** 20:.1f} MiB{detail}")
    if total > LIMIT:
        sys.exit(f"{dest} is over the 64 MiB a device call carries")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a prepared run folder (being prepare)")
    ap.add_argument("--dest", type=Path, default=CHECKOUT / ".gpu")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--cli", action="store_true", help="carry the run folder and run the real CLI there")
    mode.add_argument("--trainer-benchmark", action="store_true", help="print benchmarks.gpu_trainer's command")
    mode.add_argument("--refiner-benchmark", action="store_true", help="carry the live path's audio needs too "
                      "and print `benchmarks.refiner --throughput`'s command")
    ap.add_argument("--audio", type=Path, help="with --cli: the audio that `being render` gets there")
    ap.add_argument("--speech", type=Path, nargs="+", help="without --cli: speech files joined with pauses of "
                    f"{PAUSE_S} s into the packed run's speech/ (wav + mel features) for gpu_quality --speech")
    ap.add_argument("--more", type=Path, nargs="+", default=[], help="without --cli: more prepared runs, packed "
                    "beside the first (pack-<name>/) for one gpu_quality over all of them")
    ap.add_argument("--variants", nargs="+", help="without --cli: benchmarks.gpu_quality's NAME:key=value,... "
                    "variants (default: seed 0 for --folds, seeds 0-2 otherwise)")
    ap.add_argument("--folds", action="store_true", help="without --cli: train every fold view of each run "
                    "(benchmarks.folds; one training per stretch of the clip) instead of three seeds of the run, and "
                    "bring the held-out videos back as results.tar.* for `benchmarks.folds score` here")
    args = ap.parse_args()
    if args.cli and not (args.audio and args.audio.is_file()):
        sys.exit(f"--cli needs --audio with an existing audio file (got {args.audio})")
    if not (args.run / "being.json").is_file():
        sys.exit(f"{args.run} is not a prepared run folder (no being.json)")
    wheels = args.dest / "whl"
    names = PACKAGES + (CLI_PACKAGES if args.cli else LIVE_PACKAGES if args.refiner_benchmark else ())
    pins = ["gsplat==1.5.3"] + [f"{name}=={importlib.metadata.version(name)}" for name in names]
    download(pins, wheels)
    being_wheels(wheels)
    carry_ffmpeg(args.dest)
    if args.cli:
        carry_run(args.run, args.dest)
        shutil.copyfile(args.audio, args.dest / "audio.wav")
    else:
        fresh_pack(args.run, args.dest / "pack")
        if args.speech:
            speech(args.speech, args.run, args.dest / "pack" / "speech")
        for more in args.more:
            fresh_pack(more, args.dest / f"pack-{more.name}")
            if args.speech:
                speech(args.speech, more, args.dest / f"pack-{more.name}" / "speech")
    rel = args.dest.resolve().relative_to(CHECKOUT) if args.dest.resolve().is_relative_to(CHECKOUT) else args.dest
    setup = (f"set -e; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {rel}/whl/*.whl; "
             f"cp -r {rel}/py/imageio_ffmpeg /tmp/site/; python3 -c \"import lzma,shutil;"
             f"shutil.copyfileobj(lzma.open('{rel}/ffmpeg.xz'),open('/tmp/ffmpeg','wb'))\"; chmod +x /tmp/ffmpeg")
    # gsplat's kernels build into one folder, so a second call on the same warm machine does not build them again
    env = ("export PYTHONPATH=/tmp/site:$PWD IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg TORCH_CUDA_ARCH_LIST=9.0 "
           "TORCH_EXTENSIONS_DIR=/tmp/ext PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH")
    if args.cli:
        check_fits(args.dest, f" (wheels {size(wheels) / 2 ** 20:.1f})")
        run = f"/tmp/{args.run.resolve().name}"
        print(f"carry: [\"{rel}\"]; command:\n{setup}; {env}; python3 -c \"import tarfile;"
              f"tarfile.open('{rel}/run.tar.xz').extractall('/tmp')\"; being train {run} > $OUT/train.log 2>&1; "
              f"being render {run} --audio {rel}/audio.wav -o $OUT/render.mp4 > $OUT/render.log 2>&1; "
              f"cp {run}/avatar/metrics.json {run}/avatar/val.mp4 {run}/being.json $OUT/")
        return
    # -P: the checkout is on PYTHONPATH for benchmarks/ and tools/ only; its being_core must not shadow the
    # installed wheel (the shipped configs are package data of the wheel, not a folder of the source package)
    first = f"/tmp/{args.run.resolve().name}" if args.folds else "/tmp/run"  # fold views are named after it
    packs = ["pack", *(f"pack-{m.name}" for m in args.more)]
    unpack = "; ".join([f"python3 -P -m tools.gpu.pack unpack {rel}/pack {first}"] +
                       [f"python3 -P -m tools.gpu.pack unpack {rel}/pack-{m.name} /tmp/{m.name}" for m in args.more])
    runs = ",".join([first, *(f"/tmp/{m.name}" for m in args.more)])
    if args.trainer_benchmark or args.refiner_benchmark:
        bench = ("python3 -P -m benchmarks.gpu_trainer /tmp/run $OUT" if args.trainer_benchmark else
                 "python3 -P -m benchmarks.refiner /tmp/run $OUT --throughput")
    else:
        if args.folds:  # several trainings per GPU: a 2-GPU machine trains two 10-fold clips in about 7 minutes
            what = ",".join(f"$(python3 -P -m benchmarks.folds make {r} /tmp/folds)" for r in runs.split(","))
            variants, score = "base-s0:seed=0", "python -m benchmarks.folds score RUN RESULTS"
        else:
            what, variants = runs, "base-s0:seed=0 base-s1:seed=1 base-s2:seed=2"
            score = "python -m benchmarks.lipsync returned RUN SPEECH.wav RESULTS/*-stage"
        variants = " ".join(args.variants) if args.variants else variants
        if args.speech and not args.folds:
            variants += " --speech speech"
        # what comes back: a call returns 8 files of 16 MiB, 64 MiB in all: the videos re-encoded (x264 crf 26,
        # a third of their size; FaceMesh reads the mouth the same), then tarred and cut in parts
        # the trainings stop short of a call's 10 minutes, so that what they finished still comes back
        bench = (f"timeout {TRAINING_LIMIT_S} python3 -P -m benchmarks.gpu_quality {what} /tmp/results {variants} "
                 "--slim > $OUT/log.txt 2>&1 || echo gpu_quality exit $? >> $OUT/log.txt; "
                 "cd /tmp && find results -name '*.mp4' | xargs -P 16 -I{} sh -c 'mkdir -p small/$(dirname {}) && "
                 "/tmp/ffmpeg -loglevel error -i {} -c:v libx264 -crf 26 -preset veryfast small/{}'; "
                 "cp results/*.json small/results/ 2>/dev/null || true; tar cf - -C /tmp/small/results . | "
                 "split -b 15M - $OUT/results.tar.")
        bench += f"\n(then here: cat results.tar.* | tar x -C RESULTS; {score})"
    if size(args.dest) <= LIMIT - TREE:
        check_fits(args.dest, f" (wheels {size(wheels) / 2 ** 20:.1f})")
        print(f"carry: [\"{rel}\"]; command:\n{setup}; {env}; {unpack}; {bench}")
        return
    # too much for one call: the wheels and ffmpeg first, then, on the same warm machine (it goes back after
    # 30 s idle: send the second call at once), the packs
    tools = ("whl", "py", "ffmpeg.xz")
    if sum(size(args.dest / p) for p in packs) > LIMIT - TREE:
        sys.exit(f"{args.dest}: the packs alone are over the 64 MiB a device call carries (less the checkout)")
    print(f"{args.dest}: {size(args.dest) / 2 ** 20:.1f} MiB, over one call: two calls on one warm machine")
    print(f"call 1, carry: {[f'{rel}/{t}' for t in tools]}; command:\n{setup}; nvidia-smi -L > $OUT/gpus.txt; "
          f"{env}; python3 -P -c 'from benchmarks.gpu_trainer import compare_rasterisers as c; print(c())' "
          "> $OUT/gsplat.txt 2>&1")
    print(f"call 2, at once, carry: {[f'{rel}/{p}' for p in packs]}; command:\nset -e; test -x /tmp/ffmpeg || "
          f"exit 3; {env}; {unpack}; {bench}")


def fresh_pack(run: Path, dest: Path) -> None:
    """``run`` packed into ``dest``, unless ``dest`` already holds it (the same ``being.json``): a pack of another
    run, or of this one before it changed, is packed again."""
    if (dest / "being.json").is_file() and (dest / "being.json").read_bytes() == (run / "being.json").read_bytes():
        return
    shutil.rmtree(dest, ignore_errors=True)
    packing.pack(run, dest)


PAUSE_S = 1.2
#: seconds the trainings of a device call may take (a call may run 10 minutes; the videos' re-encoding and
#: transfer take the rest)
TRAINING_LIMIT_S = 540


def speech(files: list[Path], run: Path, dest: Path) -> None:
    """``files`` as one 16 kHz mono ``dest/aud.wav``, each followed by a pause of :data:`PAUSE_S` seconds (the
    avatar should close its mouth there), and its mel features as the run's mel encoder would write them."""
    import wave

    import numpy as np
    from being_audio_mel import MelConfig, log_mel

    from being_core.audio import SAMPLE_RATE, frame_windows
    from benchmarks.lipsync import speech_of

    manifest = json.loads((run / "being.json").read_text())
    encoder = manifest["stages"]["audio_encoder"]
    if encoder["impl"] != "mel":
        sys.exit(f"--speech computes mel features; {run} was prepared with the '{encoder['impl']}' encoder")
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), np.int16)
    pieces = []
    for f in files:  # read_wav's floats are the 16-bit samples over 32768: exact back to int16
        pieces += [(speech_of(f) * 32768).astype(np.int16), pause]
    samples = np.concatenate(pieces)
    dest.mkdir(parents=True, exist_ok=True)
    with wave.open(str(dest / "aud.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.tobytes())
    cfg = MelConfig(**encoder["config"])
    fps = manifest["dataset"]["fps"]
    n_frames = max(1, round(len(samples) / SAMPLE_RATE * fps))
    windows, _ = frame_windows(log_mel(samples.astype(np.float32) / 32768.0, cfg), n_frames, fps, cfg.window,
                               lead=cfg.lead)
    np.save(dest / encoder["info"]["file"], windows.astype(np.float32))


def download(pins: list[str], wheels: Path) -> None:
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(wheels), *pins],
                   check=True)


def being_wheels(wheels: Path) -> None:
    """Wheels of being-core and every plugin of this checkout."""
    sources = [CHECKOUT, *sorted(p for p in (CHECKOUT / "plugins").iterdir() if (p / "pyproject.toml").is_file())]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                    *map(str, sources)], check=True)


def carry_run(run: Path, dest: Path) -> None:
    """The run folder as run.tar.xz."""
    import tarfile

    tmp = dest / "run.tar.xz.tmp"
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        tar.add(run, arcname=run.resolve().name)
    tmp.replace(dest / "run.tar.xz")


def carry_ffmpeg(dest: Path) -> None:
    """imageio-ffmpeg as py/imageio_ffmpeg (without its binary) and the binary as ffmpeg.xz."""
    import lzma
    import tempfile
    import zipfile

    if (dest / "ffmpeg.xz").is_file() and (dest / "py" / "imageio_ffmpeg").is_dir():
        return
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
