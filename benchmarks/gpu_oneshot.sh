#!/usr/bin/env bash
# One-shot GPU benchmark of the inference service, for a lent GPU machine (run once, ~5 min).
#
#   bash benchmarks/gpu_oneshot.sh [OUT_DIR]     # OUT_DIR defaults to $OUT, else ./gpu_results
#
# Needs: this checkout, Python 3.11 with the project installed (pip install -e .) and a CUDA
# build of torch. Everything else (broker, data) is local: the embedded tansu broker and the
# shipped demo bundle. Results: OUT_DIR/env.txt, OUT_DIR/results.jsonl, OUT_DIR/*.log.
# Without a CUDA device every step runs on the CPU instead (a dry run of the script).
#
# Steps (each bounded by `timeout` so one stuck step cannot eat the lease):
#   1. environment: GPU, driver, torch/CUDA versions;
#   2. head-only scoring throughput on the GPU vs CPU (batch 256..8192), no Kafka;
#   3. serve_throughput.py --device cuda, demo bundle (~135 B v3 messages) and a 2 KB layout
#      (m=1024, K=512), 100k windows, 100 devices - compare with the CPU numbers in
#      docs/bench/inference.md (which were measured on the 2-core dev box);
#   4. e2e_latency.py with 100 and 1,000 devices, serve on cuda.
set -u
OUT_DIR="${1:-${OUT:-./gpu_results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
{
  date -u
  nvidia-smi || echo "nvidia-smi not found"
  nproc
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
DEV=cpu
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  DEV=cuda
fi
echo "torch device: $DEV"
if ! "$PY" -c "import dropstream" 2>/dev/null; then
  "$PY" -m pip install -q -e . > "$OUT_DIR/pip.log" 2>&1 || echo "pip install -e . failed; see pip.log"
fi

timeout 120 "$PY" - <<'PYEOF' > "$OUT_DIR/head_throughput.log" 2>&1
import json, time, torch
from dropstream.inference.head import ServerModel
from dropstream.inference.demo import DEMO_BUNDLE
model = ServerModel.load(DEMO_BUNDLE)
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    head = model.head.to(dev).eval()
    for n in (256, 1024, 4096, 8192):
        x = torch.rand(n, model.bundle.layer.width)
        with torch.inference_mode():
            for _ in range(3):
                head(x.to(dev)).cpu()
            t = time.perf_counter(); reps = 20
            for _ in range(reps):
                head(x.to(dev, non_blocking=True)).cpu()  # includes host->device and back
            dt = (time.perf_counter() - t) / reps
        print(json.dumps({"benchmark": "head_only", "device": dev, "batch": n,
                          "windows_per_s": round(n / dt), "ms_per_batch": round(dt * 1e3, 3)}))
PYEOF
cat "$OUT_DIR/head_throughput.log"; cat "$OUT_DIR/head_throughput.log" | grep '^{' >> "$OUT_DIR/results.jsonl"

timeout 200 "$PY" benchmarks/serve_throughput.py --windows 100000 --devices 100 --device "$DEV" \
  --max-batch 2048 --json "$OUT_DIR/results.jsonl" > "$OUT_DIR/serve_demo.log" 2>&1
tail -22 "$OUT_DIR/serve_demo.log"
timeout 200 "$PY" benchmarks/serve_throughput.py --windows 100000 --devices 100 --device "$DEV" \
  --max-batch 2048 --width 1024 --keep 512 --json "$OUT_DIR/results.jsonl" \
  > "$OUT_DIR/serve_2kb.log" 2>&1
tail -22 "$OUT_DIR/serve_2kb.log"
timeout 150 "$PY" benchmarks/e2e_latency.py --devices 100 --seconds 30 \
  --serve-args "--device $DEV" --json "$OUT_DIR/results.jsonl" > "$OUT_DIR/latency.log" 2>&1
grep -A12 '"detection_latency"' "$OUT_DIR/latency.log" | head -14
timeout 240 "$PY" benchmarks/e2e_latency.py --devices 1000 --seconds 20 \
  --serve-args "--device $DEV" --json "$OUT_DIR/results.jsonl" > "$OUT_DIR/latency_1000.log" 2>&1
grep -A12 '"detection_latency"' "$OUT_DIR/latency_1000.log" | head -14
echo "results in $OUT_DIR/results.jsonl"
