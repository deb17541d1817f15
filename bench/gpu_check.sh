#!/usr/bin/env bash
# One command for a machine with a CUDA device (no internet needed; torch and the project's dependencies present):
#   bash bench/gpu_check.sh            # results under $OUT (default ./gpu-out), all within ~8 minutes
# 1. installs the project (pip -e, no deps, no build isolation; falls back to PYTHONPATH when pip cannot),
# 2. runs the CUDA tests: every metric on CUDA against the CPU float64 oracle (tests/test_cuda.py, tolerances stated
#    there), the CUDA cases of the linalg tests, GPU executors (processes, Ray with fractional GPUs when installed),
# 3. times analyze on CUDA and on the CPU for a Qwen2-0.5B-shaped (24 layers) and a Qwen2-7B-shaped (2 of its 28
#    layers: every matrix shape and the embedding, per-layer costs extrapolate) bf16 trajectory built locally,
# 4. if time is left, the speedup of processes:1,2,4,8 on the CPU (bench/bench_scale.py, 0.5B shapes, 8 layers).
# DRY_RUN=1 checks the script on a machine without CUDA: no install (PYTHONPATH instead), CPU only, tiny shapes.
# Every phase has its own time limit, so a slow phase costs its share and the rest still runs; results so far are
# always in $OUT (summary.md, pytest.txt, gpu-bench.jsonl, scale.txt, env.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-out}
BUDGET=${BUDGET:-470}           # seconds for everything (8 minutes, less a margin for copying results back)
DATA=${DATA:-${TMPDIR:-/tmp}/opd-gpu-bench}
mkdir -p "$OUT" "$DATA"
START=$(date +%s)
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false \
       RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
unset OMP_NUM_THREADS MKL_NUM_THREADS   # torch's default: every CPU of the affinity mask
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.md"; }
: > "$OUT/summary.md"

# -- 0. the machine ------------------------------------------------------------------------------------------------
{
  date -u; uname -a; uptime
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -5
  python3 -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count(), 'cpus', len(os.sched_getaffinity(0)))"
  grep -m1 "model name" /proc/cpuinfo
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
DEVICES=cuda,cpu
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ -z "${DRY_RUN:-}" ]; then say "no CUDA device visible to torch: nothing to check"; exit 1; fi
  DEVICES=cpu; say "DRY_RUN: no CUDA here; CPU only, tiny shapes"
fi
missing=$(python3 - <<'EOF'
import importlib
need = ["torch", "safetensors", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "typer", "transformers", "tqdm", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
[ -n "$missing" ] && say "missing Python packages (install them first; this script does not download): $missing"

# -- 1. install ----------------------------------------------------------------------------------------------------
if [ -z "${DRY_RUN:-}" ] && timeout 120 python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.txt" 2>&1; then
  say "installed with pip -e (no deps)"
else
  shim=$(mktemp -d); ln -s "$REPO/cli" "$shim/opd_dynamics_cli"
  export PYTHONPATH="$REPO:$shim${PYTHONPATH:+:$PYTHONPATH}"
  if [ -n "${DRY_RUN:-}" ]; then why="DRY_RUN: not installing"; else why="pip install failed (see install.txt)"; fi
  say "$why: using PYTHONPATH=$REPO and the CLI shim instead"
fi
python3 -c "import opd_dynamics, opd_dynamics_cli; print('opd_dynamics from', opd_dynamics.__file__)" | tee -a "$OUT/summary.md"

# -- 2. CUDA tests -------------------------------------------------------------------------------------------------
say "CUDA tests"
timeout $(( $(left) > 150 ? 150 : $(left) )) python3 -m pytest -p no:cacheprovider -rs tests/test_cuda.py \
  "tests/test_engine.py::test_gpu_path_matches_cpu" tests/test_linalg.py -k "cuda or gpu or test_cuda" \
  > "$OUT/pytest.txt" 2>&1
rc=$?
tail -n 15 "$OUT/pytest.txt"
say "CUDA tests exit status $rc ($(grep -E "passed|failed|skipped|error" "$OUT/pytest.txt" | grep -v "^SKIPPED" | tail -n 1))"

# -- 3. analyze on CUDA vs CPU ---------------------------------------------------------------------------------------
bench() {  # shape layers steps limit
  local t=$(( $(left) < $4 ? $(left) : $4 ))
  if [ "$t" -lt 20 ]; then say "skipped $1 ($2 layers): out of time"; return; fi
  say "analyze $1-shaped, $2 layers, $3 steps (limit ${t}s)"
  timeout "$t" python3 bench/gpu_bench.py --shape "$1" --layers "$2" --steps "$3" --dir "$DATA" \
    --devices "$DEVICES" --out "$OUT/gpu-bench.jsonl" >> "$OUT/gpu-bench.log" 2>&1 \
    || say "  $1 stopped (exit $?): see gpu-bench.log"
}
if [ -n "${DRY_RUN:-}" ]; then
  bench 0.5b 1 1 150
else
  bench 0.5b 24 2 150
  bench 7b 2 2 170
fi
python3 - "$OUT/gpu-bench.jsonl" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except FileNotFoundError:
    sys.exit(0)
print("| shape | layers | what | device | seconds | peak GPU MB | peak RSS MB | note |\n|---|---|---|---|---|---|---|---|")
for r in rows:
    note = (r.get("gpu") or "") + (f" error: {r['error'][-200:]}" if "error" in r else "")
    if r["what"] == "read":
        note = f"{r['bytes'] / 2**30:.2f} GiB, {r['bytes'] / 2**30 / r['seconds']:.2f} GiB/s"
    print(f"| {r['shape']} | {r['layers']} | {r['what']} | {r.get('device', '')} | {r.get('seconds', float('nan')):.1f} | "
          f"{r.get('peak_gpu_mb', 0):.0f} | {r.get('peak_rss_mb', 0):.0f} | {note} |")
EOF

# -- 4. CPU worker scaling, if time is left ------------------------------------------------------------------------
if [ "$(left)" -gt 100 ] && [ -z "${DRY_RUN:-}" ]; then
  say "processes:1,2,4,8 on the CPU (0.5B shapes, 8 layers, 2 steps)"
  timeout $(( $(left) - 10 )) python3 bench/bench_scale.py --dir "$DATA" --layers 8 --steps 2 --workers 1,2,4,8 \
    --executors local,processes > "$OUT/scale.txt" 2>&1 || say "  scaling stopped (exit $?): partial output in scale.txt"
  cat "$OUT/scale.txt" | tee -a "$OUT/summary.md"
else
  say "skipped the worker-scaling run (DRY_RUN, or only $(left)s left)"
fi
say "done; results in $OUT"
exit $rc
