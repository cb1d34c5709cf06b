#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.py needs on the borrowed GPU machine, which has
# torch, Lightning, torchmetrics, TensorBoard and matplotlib but no captum or
# jsonargparse, no network, and no view of ../shared. Run it here, from any folder:
#
#     bash benchmarks/gpu_prepare.sh [DATA_DIR] [PER_CLASS]
#
# It fills .gpu_check/ (ignored by git) in the repository root with
#   wheels/       captum and jsonargparse[signatures] with their dependencies that
#                 the GPU image lacks (pure Python, for its Python 3.12, x86-64);
#   cifar10.tar.gz  PER_CLASS real training JPEGs per class from DATA_DIR/train
#                 (default 5000: all 50,000, 16 MB gzipped; their 197 MB on disk
#                 is mostly file-system blocks). gpu_check.py lays them out as
#                 train/ (45,000 trained, 5,000 validated; fewer carried are
#                 tiled up to that) and reuses 100 per class as a stand-in test/.
# Everything a device call carries, the repository included, must stay under
# 64 MiB: this folder is about 18 MB.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$repo/../shared/cifar10-jpg}
per_class=${2:-5000}
out=$repo/.gpu_check
python=${PYTHON:-python3}

[ -d "$data/train" ] || { echo "error: no $data/train; pass the folder holding train/<class>/*.jpg" >&2; exit 2; }

rm -rf "$out" && mkdir -p "$out/wheels"
# Versions: those the project is tested with here; the GPU image has every other
# dependency they declare (matplotlib, numpy, packaging, tqdm, PyYAML, typing-extensions).
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out/wheels" captum==0.9.0 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0

# The first PER_CLASS files of each class in name order: the same subset every time.
(cd "$data" && for class in $(ls train); do ls "train/$class" | sort | sed -n "1,${per_class}s|^|train/$class/|p"; done) \
    > "$out/files.txt"
tar -czf "$out/cifar10.tar.gz" -C "$data" -T "$out/files.txt"
rm "$out/files.txt"
du -sh "$out"/wheels "$out"/cifar10.tar.gz
echo "carry: .gpu_check (see docs/gpu_check.md)"
