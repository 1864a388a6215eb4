#!/usr/bin/env bash
# Everything to check on a GPU machine, in one run of under 10 minutes; results go to ${OUT:-gpu_check}/ (at most
# 8 files: the device tool brings back no more). Steps, each under its own time limit so that one hang cannot
# spend the whole device budget:
#   1. the environment (torch, CUDA, tinycudann, nerfacc's toolchain)             -> env.json
#   2. nerfacc's JIT build of its CUDA extension (nvcc + ninja; timed), first, so
#      the tests below load the build instead of compiling inside a test           -> gpu_check.log
#   3. tests/test_cuda.py (CUDA against the CPU: hash grid, nerfacc compositing, a
#      render_rays pass with each marching, training steps + checkpoint to the CPU),
#      then the CUDA-only tests of the other files (tcnn vs torch, nerfacc marching) -> gpu_check.log
#   4. bench_field.py, bench_train.py (gpu preset: the "30 dB in 60 s" target) and
#      bench_view.py (512x512: the ">= 30 FPS" target; marching with nerfacc, then
#      with torch, to see which is faster on this GPU) on CUDA                      -> bench_*.json
# A machine without the project's packages (the lent GPU machine reaches no registry): run
# `bash scripts/gpu_prepare.sh` here first; it fills .gpu/ (wheels + the built-in character), which this script
# installs from when present. Device tool call: carry [".gpu"], command "bash scripts/gpu_check.sh".
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"  # no stale global build locks
PY="${PYTHON:-python3}"
if [ -d .gpu/wheels ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl >>"$log" 2>&1 || echo "installing .gpu/wheels failed (see the log)" | tee -a "$log"
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export FAST_ANERF_CACHE="$PWD/.gpu/cache"  # the built-in character, generated here by gpu_prepare.sh
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, output to the log, note failures
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 25
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || status=1
}

step env 60 "$PY" - <<'PY'
import json, os, shutil, sys, torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "available": torch.cuda.is_available(), "nvcc": shutil.which("nvcc"), "ninja": shutil.which("ninja")}
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name()
try:
    import tinycudann  # noqa: F401
    info["tinycudann"] = True
except (ImportError, OSError) as error:
    info["tinycudann"] = f"unavailable: {type(error).__name__}: {error}"
out = os.environ.get("OUT", "gpu_check")
open(os.path.join(out, "env.json"), "w").write(json.dumps(info, indent=2))
print(json.dumps(info, indent=2))
PY

step "nerfacc JIT build" 240 "$PY" - <<'PY'
import json, time, torch
start = time.perf_counter()
from fast_anerf.sampling.volrend import nerfacc_cuda
ok, why = nerfacc_cuda()  # imports nerfacc.cuda._backend: builds the extension the first time
print(json.dumps({"nerfacc_cuda": ok, "why": why, "build_or_load_s": round(time.perf_counter() - start, 1)}))
if ok:
    import nerfacc
    ray_indices = torch.tensor([0, 0, 1, 1, 1], device="cuda")
    t = torch.arange(5.0, device="cuda")
    w, _, _ = nerfacc.render_weight_from_density(t, t + 1, torch.rand(5, device="cuda"), ray_indices=ray_indices, n_rays=2)
    print("weights", w.tolist())
raise SystemExit(0 if ok else 1)
PY

step "CUDA twins" 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
step "CUDA tests" 100 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or nerfacc or tcnn" \
    tests/test_hashgrid.py tests/test_mlp.py tests/test_march.py tests/test_hashgrid_cpu.py

step bench_field 50 "$PY" scripts/bench_field.py --device cuda --out "$out/bench_field.json"
step bench_train 150 "$PY" scripts/bench_train.py --device cuda --minutes 1 --fields fast --fast-preset gpu --gt-poses \
    --eval-every-s 15 --out "$out/bench_train.json" --runs /tmp/gpu_check_runs
ckpt=/tmp/gpu_check_runs/fast/checkpoint.pt  # the 1-minute model just trained (else: an untrained field)
[ -f "$ckpt" ] || ckpt=
step bench_view 50 "$PY" scripts/bench_view.py --device cuda --sizes 256 512 --frames 20 ${ckpt:+--ckpt "$ckpt"} \
    --out "$out/bench_view.json"
step "bench_view, torch marching" 50 "$PY" scripts/bench_view.py --device cuda --sizes 256 512 --frames 20 \
    --march torch ${ckpt:+--ckpt "$ckpt"} --out "$out/bench_view_march_torch.json"
exit $status
