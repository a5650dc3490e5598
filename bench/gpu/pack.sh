#!/usr/bin/env bash
# Packs what one call of a lent GPU machine needs and that its image lacks, into .devdata/ (ignored by git,
# named in the call's `carry`): the Python packages simsearch's training needs beyond that image (wheels for
# CPython 3.12, unpacked and xz-compressed together), and CIFAR-10 (JPEG) and Fashion-MNIST from ../shared/data
# recompressed with xz (byte-identical after decompression). Everything must fit the 64 MiB a call carries, so
# kornia_rs (14 MB, used by kornia.io only, which training never imports) is left out; session.sh puts an empty
# module in its place.
#   bash bench/gpu/pack.sh        (run here, from the repository root; needs pip access to PyPI)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${SIMSEARCH_SHARED_DATA:-../shared/data}"
PY=.venv/bin/python
mkdir -p .devdata
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$tmp/whl" \
  "pytorch-metric-learning==$("$PY" -c 'import pytorch_metric_learning as m; print(m.__version__)')" \
  "faiss-cpu==$("$PY" -c 'import faiss; print(faiss.__version__)')" \
  "kornia==$("$PY" -c 'import kornia; print(kornia.__version__)')" \
  "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated-types typing-inspection
mkdir "$tmp/site"
for w in "$tmp"/whl/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
tar cf - -C "$tmp/site" . | xz -9 -T2 > .devdata/site312.tar.xz
xz -9 -T2 -c "$DATA/cifar10-jpeg.tar" > .devdata/cifar10-jpeg.tar.xz
mkdir -p .devdata/fashion-mnist
for f in train-images-idx3-ubyte t10k-images-idx3-ubyte train-labels-idx1-ubyte t10k-labels-idx1-ubyte; do
  zcat "$DATA/fashion-mnist/$f.gz" | xz -9 -T2 > ".devdata/fashion-mnist/$f.xz"
done
du -cb .devdata/* .devdata/fashion-mnist/* | tail -1
