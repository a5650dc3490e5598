#!/usr/bin/env bash
# One call of a lent GPU machine (see /work/.library/device): GPU training speed (bench_train.py) and long
# training runs (runs.py), in one command that ends inside the call's 10 minutes. Run there, from the
# repository root, with .devdata carried (bash bench/gpu/pack.sh makes it here):
#   BUDGET_S=570 bash bench/gpu/session.sh           (bench, then runs.py's long runs)
#   RUNS=0 FAST_BATCHES=128 bash bench/gpu/session.sh  (bench, then the bundled res recipe's epoch time alone)
#   BENCH=0 ONLY=hybrid1-res-s1-cifar10 MAX_EPOCHS=64 bash bench/gpu/session.sh   (one long run, no bench)
# Results go to $OUT: bench_train_gpu.json, runs.tar.gz (artifacts, metrics, logs, unfinished checkpoints), log.
set -uo pipefail
T0=$(date +%s)
export DEADLINE=$((T0 + ${BUDGET_S:-570}))
export PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" /tmp/site /tmp/data/fashion-mnist /tmp/runs
tar xJf .devdata/site312.tar.xz -C /tmp/site
# kornia imports kornia_rs for kornia.io alone, which training never calls; the real package did not fit.
mkdir -p /tmp/site/kornia_rs && printf 'import types\nio = types.ModuleType("kornia_rs.io")\n' > /tmp/site/kornia_rs/__init__.py
export PYTHONPATH="/tmp/site:$PWD" SIMSEARCH_SHARED_DATA=/tmp/data
xz -dc .devdata/cifar10-jpeg.tar.xz > /tmp/data/cifar10-jpeg.tar &
for f in .devdata/fashion-mnist/*.xz; do xz -dc "$f" > "/tmp/data/fashion-mnist/$(basename "$f" .xz)" & done
wait
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv
python3 -c "import torch, torchvision, kornia, faiss, pytorch_metric_learning as p; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'kornia', kornia.__version__, 'faiss', faiss.__version__, 'pml', p.__version__, 'cuda', torch.cuda.is_available())" || exit 3
nproc; python3 --version
# Smoke: a tiny real run on the GPU end to end (kornia augmentation, AMP, test scores through FAISS).
timeout 120 python3 -m cli train /tmp/data/fashion-mnist --out /tmp/smoke.safetensors --epochs 1 --max-train 2000 \
  --max-test 500 --val-fraction 0 --quiet 2>&1 | tail -3 || exit 4
test -f /tmp/smoke.safetensors || exit 4
echo "setup+smoke done at $(( $(date +%s) - T0 )) s"
[ "${BENCH:-1}" = 1 ] && timeout "${BENCH_S:-130}" python3 bench/bench_train.py --datasets cifar10 --no-cpu --steps 30 --cuda-epochs 2 \
  --fast-batches "${FAST_BATCHES:-512}" \
  --result train_gpu 2>&1 | grep -v Warning
cp docs/results/bench_train_gpu.json "$OUT/" 2>/dev/null
echo "bench done at $(( $(date +%s) - T0 )) s"
if [ "${RUNS:-1}" = 1 ]; then
  python3 bench/gpu/runs.py 2>&1
  echo "runs done at $(( $(date +%s) - T0 )) s"
else  # the bundled hybrid1-res-cifar10 recipe, 3 epochs on the GPU alone: its seconds per epoch
  mkdir -p /tmp/runs/res-recipe-3ep
  timeout 150 python3 -m cli train /tmp/data/cifar10-jpeg.tar --out /tmp/runs/res-recipe-3ep/r.safetensors --epochs 3 \
    --val-fraction 0 --quiet --arch norm=true --arch residual=true --arch widths=[32,64,64] --set erase=0.5 \
    2>&1 | grep '"epoch"' | tee /tmp/runs/res-recipe-3ep/log.txt
fi
tar czf "$OUT/runs.tar.gz" -C /tmp runs
ls -la "$OUT"
