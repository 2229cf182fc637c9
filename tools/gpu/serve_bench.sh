# The live-serving figures of docs/benchmarks.md on a GPU box (run there: `bash tools/gpu/serve_bench.sh DIR`).
# DIR (default .gpu5) is a carry folder: whl/ (being-core and the plugins' wheels, gsplat, librosa and the serve
# plugin's pure-Python dependencies), uv/ (uvloop and httptools wheels), py/imageio_ffmpeg and ffmpeg.xz, pack/ (a run
# packed by tools/gpu/pack.py, with speech/aud.wav) and trained.tgz (that run's being.json and avatar/ after training).
set -e
D=${1:-.gpu5}
if [ -d /tmp/site/gsplat ]; then W="$D/whl/being_*.whl"; else W="$D/whl/*.whl $D/uv/*.whl"; fi
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site $W 2>&1 | grep -v WARN | tail -2
rm -f ~/.cache/torch_extensions/*/*/lock  # left by a compile that a timeout killed: every later one would wait on it
xz -dc $D/ffmpeg.xz > /tmp/ffmpeg && chmod +x /tmp/ffmpeg
export PYTHONPATH=/tmp/site:$PWD/$D/py:$PWD IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg
[ -d /tmp/run ] || python3 -P -m tools.gpu.pack unpack $D/pack /tmp/run > /dev/null
tar xzf $D/trained.tgz -C /tmp/run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
# gsplat compiles once, before the servers start (N workers would otherwise wait on one compile)
timeout 420 python3 -P -c "from gsplat.cuda._backend import _C; print('gsplat ready', _C is not None)"
B="python3 -P -m benchmarks.serve /tmp/run"
S="--speech $PWD/$D/pack/speech/aud.wav --seconds 12"
timeout 150 $B $OUT/w4 $S --levels 1,8,16,24,32 --serve-options="--workers 4" 2>&1 | grep "^|" || true
timeout 100 $B $OUT/w1 $S --levels 1,8,16,24 2>&1 | grep "^|" || true
