#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (the device tool's `run`); CI never runs it.
# Writes its figures under ${OUT:-gpu-check}/ for docs/benchmarks.md. Needs torch with CUDA on the
# machine (nothing can be installed from outside there); t2i itself is installed from this checkout.
#   bash benchmarks/gpu_check.sh            (about 6 minutes on one H100)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD/src
python - <<'PY' | tee "$out/gpu.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
step() { echo "== $*" | tee -a "$out/log.txt"; }

step "1. one generation, CPU against GPU (the seeds' timing), fp32 and bf16"
timeout 120 python -m t2i bench --device cpu cuda --repeats 5 2>&1 | tee "$out/bench.txt"
timeout 60 python -m t2i generate "red apple" --seed 0 --device cuda --dtype bfloat16 --out "$out/apple-bf16.png" 2>&1 | tail -1
timeout 60 python -m t2i generate "red apple" --seed 0 --device cuda --out "$out/apple-fp32.png" 2>&1 | tail -1
timeout 60 python -m t2i generate "red apple" --seed 0 --device cpu --out "$out/apple-cpu.png" 2>&1 | tail -1
python - "$out" <<'PY' | tee -a "$out/log.txt"
import sys, numpy as np
from PIL import Image
d = sys.argv[1]
cpu = np.asarray(Image.open(f"{d}/apple-cpu.png"), dtype=int)
for name in ("fp32", "bf16"):
    gpu = np.asarray(Image.open(f"{d}/apple-{name}.png"), dtype=int)
    print(f"cuda {name} against cpu: max level difference {np.abs(gpu - cpu).max()}, mean {np.abs(gpu - cpu).mean():.2f}")
PY

step "2. training throughput of the default model's U-Net recipe, bf16 (images/s, model FLOP utilisation)"
timeout 180 python benchmarks/train_throughput.py --device cuda --mixed-precision bf16 --batch-size 128 \
    --image-size 64 --channels 64 --repeats 10 2>&1 | tail -25 | tee "$out/train_throughput.txt"

step "3. a 2-minute training sanity run on the GPU: the loss must fall"
rm -rf "$out/sanity"
timeout 150 python -m t2i train --data shapes --out "$out/sanity" --device cuda --mixed-precision bf16 \
    --batch-size 64 --max-steps 1500 --save-every 500 --sample-every 1500 --probe-every 0 2>&1 | tail -1
python - "$out" <<'PY' | tee -a "$out/log.txt"
import sys
rows = [line.split(",") for line in open(f"{sys.argv[1]}/sanity/loss.csv").read().splitlines()[1:]]
first, last = float(rows[0][2]), float(rows[-1][2])
print(f"sanity: loss {first:.4f} at step {rows[0][0]} -> {last:.4f} at step {rows[-1][0]} "
      f"({float(rows[-1][1]):.0f} s): {'falls' if last < 0.5 * first else 'DOES NOT FALL'}")
PY

step "4. the same run on every GPU under torchrun (if more than one), then resumed on one"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -gt 1 ]; then
    rm -rf "$out/ddp"
    timeout 150 torchrun --standalone --nproc_per_node "$gpus" -m t2i train --data shapes --out "$out/ddp" \
        --device cuda --batch-size 64 --max-steps 300 --save-every 150 --probe-every 0 --sample-every 300 2>&1 | tail -1
    timeout 60 python -m t2i train --out "$out/ddp" --resume --max-steps 350 2>&1 | tail -1
else
    echo "one GPU: the multi-GPU run is tested on CPUs with gloo (tests/test_distributed.py)" | tee -a "$out/log.txt"
fi
