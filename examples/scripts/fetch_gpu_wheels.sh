#!/usr/bin/env bash
# Downloads, on a machine with the package registry, the Python 3.12 x86-64 wheels that this project's lent GPU
# machine lacks (it has torch, numpy, pandas, tensorboard, sentencepiece, einops, pytest, ... but no NeMo, Hydra,
# webdataset or megatron-core, and newer Lightning / transformers than NeMo 2.4.1 works with), into DIR:
#
#   bash examples/scripts/fetch_gpu_wheels.sh [DIR]      # default .whl (ignored by git), about 30 MB
#
# examples/scripts/gpu_acceptance.sh installs them there with `pip install --no-deps --no-index --target` and
# puts that folder first on PYTHONPATH. With the device tool: carry [".whl"].
#
# Versions follow setup.py (nemo_toolkit, lightning, pytorch-lightning, hydra-core, omegaconf, transformers,
# megatron-core, webdataset, and diffusers from the bench extra), plus what those need that the GPU image lacks
# or has in a version they do not accept: antlr4-python3-runtime 4.9.* (Hydra, OmegaConf), braceexpand
# (webdataset), tokenizers 0.21.* and huggingface_hub < 1 (transformers 4.52), fsspec 2024.12.0 (NeMo's pin),
# and NeMo's small pure-Python requirements (wget, text-unidecode, ruamel.yaml). Older versions of these projects
# left in DIR are removed, so DIR never holds two versions of one project (pip would refuse the whole install).
#
# Environment: PYTHON (default python3).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# setup.py's requirement strings for these projects (kept in step with the install the tests run against)
mapfile -t FROM_SETUP < <("$PYTHON" - "$REPO/setup.py" <<'EOF'
import ast, re, sys
tree = ast.parse(open(sys.argv[1]).read())
lists = {}
for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
        for target in node.targets:
            if isinstance(target, ast.Name):
                try:
                    lists[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
wanted = ["nemo_toolkit", "lightning", "pytorch-lightning", "hydra-core", "omegaconf", "transformers",
          "megatron-core", "webdataset", "diffusers"]
found = {}
for spec in lists.get("install_requires", []) + lists.get("BENCH", []):
    name = re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]
    if name in wanted:
        found[name] = spec
missing = [name for name in wanted if name not in found]
if missing:
    sys.exit(f"error: setup.py names no requirement for {', '.join(missing)}")
print("\n".join(found[name] for name in wanted))
EOF
)
BINARY=(
  "${FROM_SETUP[@]}"
  braceexpand
  "tokenizers>=0.21,<0.22"
  "huggingface_hub>=0.34,<1.0"
  fsspec==2024.12.0
  text-unidecode
  ruamel.yaml
  ruamel.yaml.clib
)
# published as source only; both are pure Python, so a wheel built here installs there
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3 wget==3.2)

PLATFORM=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORM+=(--platform "$tag")
done

failed=()
for spec in "${BINARY[@]}"; do
  echo "fetching $spec"
  "$PYTHON" -m pip download -q --disable-pip-version-check "${PLATFORM[@]}" -d "$TMP" "$spec" || failed+=("$spec")
done
for spec in "${SOURCE_ONLY[@]}"; do
  echo "building $spec"
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$TMP" "$spec" || failed+=("$spec")
done
if (( ${#failed[@]} )); then
  echo "error: could not fetch: ${failed[*]}" >&2
  exit 1
fi

# move into DIR, replacing other versions of the same projects; refuse wheels that cannot run on cp312 x86-64
"$PYTHON" - "$TMP" "$DIR" <<'EOF'
import re, shutil, sys
from pathlib import Path
tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
project = lambda path: re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()
bad = []
for wheel in sorted(tmp.glob("*.whl")):
    python, abi, platform = wheel.name[:-4].split("-")[-3:]
    if not (platform == "any" or "x86_64" in platform) or not (abi in ("none", "abi3") or "cp312" in abi):
        bad.append(wheel.name)
        continue
    for old in out.glob("*.whl"):
        if project(old) == project(wheel) and old.name != wheel.name:
            print(f"removing {old.name} (replaced by {wheel.name})")
            old.unlink()
    shutil.move(str(wheel), out / wheel.name)
if bad:
    sys.exit("error: wheels that do not fit Python 3.12 on x86-64: " + ", ".join(bad))
EOF
ls -1 "$DIR"/*.whl
echo "$(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
