#!/usr/bin/env bash
# Everything to check on a GPU machine, in one run; results (logs + JSON) go to ${OUT:-gpu_check}/.
#   1. the CUDA tests (tcnn vs torch hash grid / MLP, nerfacc vs torch compositing, ...)
#   2. nerfacc's JIT build of its CUDA extension (needs nvcc + ninja; timed)
#   3. bench_field.py and bench_train.py on CUDA (gpu preset: the "30 dB in 60 s" target)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"  # no stale global build locks
status=0

python - <<'PY' > "$out/env.json" || status=1
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name()
try:
    import tinycudann  # noqa: F401
    info["tinycudann"] = True
except (ImportError, OSError) as error:
    info["tinycudann"] = f"unavailable: {type(error).__name__}: {error}"
print(json.dumps(info, indent=2))
PY
cat "$out/env.json"

echo "== CUDA tests"
python -m pytest -q -rs tests 2>&1 | tee "$out/pytest.log" | tail -n 30 || status=1

echo "== nerfacc JIT build"
python - <<'PY' 2>&1 | tee "$out/nerfacc_jit.log" || status=1
import json, time, torch, nerfacc
start = time.perf_counter()
ray_indices = torch.tensor([0, 0, 1, 1, 1], device="cuda")
t = torch.arange(5.0, device="cuda")
sigmas = torch.rand(5, device="cuda")
w, _, _ = nerfacc.render_weight_from_density(t, t + 1, sigmas, ray_indices=ray_indices, n_rays=2)
torch.cuda.synchronize()
print(json.dumps({"nerfacc_first_call_s": round(time.perf_counter() - start, 1), "weights": w.tolist()}))
PY

echo "== benchmarks"
python scripts/bench_field.py --device cuda --out "$out/bench_field.json" 2>&1 | tee "$out/bench_field.log" || status=1
python scripts/bench_train.py --device cuda --minutes 1 --fields fast --fast-preset gpu --gt-poses --eval-every-s 15 \
    --out "$out/bench_train.json" --runs "$out/runs" 2>&1 | tee "$out/bench_train.log" || status=1
exit $status
