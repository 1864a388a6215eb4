#!/usr/bin/env bash
# Run HERE (a machine with the package registry) before a device call: fills .gpu/ (ignored by git) with what
# the lent GPU machine lacks and cannot download: wheels of the project's pure-Python and cp312 dependencies
# that its image does not hold (the versions installed here), and the built-in character (generated here, so
# the GPU machine needs no embree; mannequin-x still travels: it gives the rest skeleton). Then call the device tool with
#   carry [".gpu"], command "bash scripts/gpu_check.sh"   (about 12 MB travel).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo "/.gpu/" >>.git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/cache
# The GPU image's Python is 3.12 (KINDS.md); it already has torch, numpy, h5py, imageio, PIL, rich, tqdm, pytest.
packages=(nerfacc tyro docstring-parser typeguard roma trimesh viser msgspec websockets zstandard mannequin-x nanomanifold)
pins=$(python - "${packages[@]}" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .gpu/wheels $pins
# The built-in character: generated into this machine's cache if absent (quick when present), then copied.
builtin=$(python -c "from fast_anerf.data.synthetic import generate_dataset; print(generate_dataset()['train'].parent)" | tail -n 1)
cp -r "$builtin" .gpu/cache/builtin
du -sh .gpu/wheels .gpu/cache
