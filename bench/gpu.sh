#!/usr/bin/env bash
# One command that validates and benchmarks a GPU from a clean checkout:
#
#     bash bench/gpu.sh OUTDIR
#
# Made for a machine with no network that already holds Python 3.12, numpy, cupy-cuda13x 14.2,
# torch 2.11 (CUDA 13), numba, matplotlib and pytest; budgeted to finish in under 8 minutes on
# one H100 (BUDGET below: the caps are estimates until a GPU run has timed the steps). Steps (each
# logged to OUTDIR/<step>.log, each with a time cap, later steps run even if an earlier failed):
#
#   0. a usable GPU, checked first (bpgpu's cupy probe: driver, device, an NVRTC-compiled kernel,
#      one cuBLAS GEMM); without one it stops at once: one line on stderr, exit status 2
#   1. pip install --no-deps --no-build-isolation -e .  (nothing is downloaded)
#   2. the machine record (bpgpu info --json, nvidia-smi)              -> machine.json, nvidia-smi.txt
#   3. every GPU-marked test, BPGPU_REQUIRE_GPU=1 (a skip is a failure) -> gpu-tests.xml
#   4. kernel warm-up, launches and wall time per step                  -> steps.json
#   5. bpgpu bench on the GPU matrix, cupy beside PyTorch eager on the GPU: 784-100-10 at batch
#      64, 256, 1024, 8192; 784-1024-10 at 8192 with the cuBLAS ceiling; time to 98 %
#   6. the same matrix for numba beside PyTorch on the CPU (last: it is the part a tight budget
#      cuts)
#   7. everything merged                                   -> bench.json, bench.md, bench.png
#                                                          -> summary.md (what passed, versions)
#
# Exit status: 0 when every step passed, 1 when any failed or ran out of time, 2 for bad usage or
# no GPU. PYTHON names the interpreter (default python3).

set -u
if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash bench/gpu.sh OUTDIR (installs bpgpu here, runs the GPU tests and the GPU" \
         "benchmark, writes the results into OUTDIR)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "bench/gpu.sh: no usable GPU: cannot check, $PY is not installed (set PYTHON)" >&2
    exit 2
fi

# --- 0. a usable GPU, before anything is installed or written
probe=$(cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c '
from bpgpu._compat import cupy_status
module, why = cupy_status()
print("ok" if module is not None else why.replace("\n", " "))' 2>/dev/null | tail -n 1)
if [ "$probe" != "ok" ]; then
    echo "bench/gpu.sh: no usable GPU: ${probe:-the cupy probe failed to run (is numpy installed?)}" >&2
    exit 2
fi

mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
export PYTHONUNBUFFERED=1
START=$(date +%s)
STATUS=0
: >"$OUT/steps.txt"

# The whole run must end within BUDGET seconds (7 min 45 s: under 8 minutes on one H100, with the
# probe before it). Each step has its own cap, further cut to what is left of the budget minus
# the report's RESERVE; a step with under 15 s left is skipped (and the run fails).
BUDGET=${BPGPU_GPU_BUDGET:-465}
RESERVE=25

# run NAME CAP_SECONDS COMMAND...: logs to OUT/NAME.log, records the outcome in steps.txt
run() {
    local name=$1 cap=$2
    shift 2
    local t0 rc left
    t0=$(date +%s)
    if [ "$name" != report ]; then
        left=$(( START + BUDGET - RESERVE - t0 ))
        if [ $left -lt 15 ]; then
            STATUS=1
            echo "$name: SKIPPED (out of time: ${BUDGET} s budget)" | tee -a "$OUT/steps.txt"
            return 1
        fi
        [ $left -lt "$cap" ] && cap=$left
    fi
    echo "== $name (cap ${cap} s)"
    (cd "$ROOT" && timeout --kill-after=10 "$cap" "$@") >"$OUT/$name.log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    local what="ok"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then what="TIMED OUT"; elif [ $rc -ne 0 ]; then what="FAILED (status $rc)"; fi
    [ "$what" = "ok" ] || STATUS=1
    echo "$name: $what in ${took} s" | tee -a "$OUT/steps.txt"
    tail -n 3 "$OUT/$name.log"
    return $rc
}

# --- 1. install (no network: no dependencies, no build isolation)
run install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .

# --- 2. the machine
run machine 30 sh -c "\"$PY\" -m bpgpu info --json >\"$OUT/machine.json\" && \"$PY\" -m bpgpu info"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; fi

# --- 3. the GPU tests: every gpu-marked test of the suite; a skip fails
run gpu-tests 180 env BPGPU_REQUIRE_GPU=1 "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" tests

# --- 4. warm-up, launches and microseconds per step (CUDA-synchronised wall clock)
run steps 45 "$PY" - "$OUT/steps.json" <<'EOF'
import json
import sys
import time

import bpgpu
from bpgpu.backends import get_backend

be = get_backend("cupy")
record = {"describe": be.describe(), "warmup": be.warmup(), "rows": []}
(X, y), _ = bpgpu.datasets.mnist()
for sizes, batch in (([784, 100, 10], 64), ([784, 100, 10], 256), ([784, 100, 10], 1024),
                     ([784, 1024, 10], 8192)):
    net = bpgpu.MLP(sizes, backend=be, seed=0)
    net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)     # warm-up
    be._launches.clear()
    be.synchronize()
    t0 = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)
    be.synchronize()
    wall = time.perf_counter() - t0
    steps = -(-len(X) // batch)
    per_step = {k: v / steps for k, v in sorted(be._launches.items())}
    row = {"sizes": "-".join(map(str, sizes)), "batch": batch, "steps": steps,
           "launches_per_step": per_step, "launches_per_step_total": sum(per_step.values()),
           "us_per_step": wall / steps * 1e6, "samples_per_s": len(X) / wall}
    record["rows"].append(row)
    print(f"{row['sizes']:<12} batch {batch:<5} {row['launches_per_step_total']:.0f} launches "
          f"per step, {row['us_per_step']:.0f} us per step, {row['samples_per_s'] / 1e3:.0f}k "
          f"samples/s")
with open(sys.argv[1], "w") as f:
    json.dump(record, f, indent=2, default=str)
EOF

# --- 5. the GPU matrix: cupy vs PyTorch eager on the GPU (epochs interleaved), ceiling, 98 %
run bench-gpu-small 90 "$PY" -m bpgpu bench --backends cupy --vs torch --sizes 784-100-10 \
    --batch-sizes 64,256,1024,8192 --epochs 3 --json "$OUT/bench-gpu-small.json"
run bench-gpu-wide 90 "$PY" -m bpgpu bench --backends cupy --vs torch --sizes 784-1024-10 \
    --batch-sizes 8192 --epochs 3 --time-to-accuracy --json "$OUT/bench-gpu-wide.json"

# --- 6. numba beside PyTorch on the CPU, same matrix
if "$PY" -c "import numba" >/dev/null 2>&1; then
    run bench-cpu 90 "$PY" -m bpgpu bench --backends numba --vs torch \
        --sizes 784-100-10,784-1024-10 --batch-sizes 64,256,1024,8192 --epochs 2 \
        --json "$OUT/bench-cpu.json"
else
    echo "bench-cpu: skipped (numba is not installed)" | tee -a "$OUT/steps.txt"
fi

# --- 7. one JSON, one table, one chart, and a summary
run report 25 "$PY" - "$OUT" <<'EOF'
import json
import os
import sys
import xml.etree.ElementTree as ET

from bpgpu.bench import report

out = sys.argv[1]
parts = [p for p in ("bench-gpu-small", "bench-gpu-wide", "bench-cpu")
         if os.path.exists(os.path.join(out, p + ".json"))]
runs = [json.load(open(os.path.join(out, p + ".json"))) for p in parts]
if not runs:
    sys.exit("no benchmark produced results")
# the CPU run repeats 784-1024-10 at small batches: keep the GPU matrix's rows
rows = [r for run in runs for r in run["rows"]
        if not (r["backend"] == "numba" and r["sizes"] == "784-1024-10" and r["batch"] != 8192)]
tta = [t for run in runs for t in run.get("time_to_accuracy", [])]
machine = runs[0]["machine"]
extra = ""
if tta:
    extra = ("\n\nTime to 98.0 % MNIST test accuracy (data in GPU memory, evaluation after every "
             "epoch included):\n\n| backend | seconds | epochs | test accuracy |\n|---|---|---|---|\n"
             + "\n".join(f"| {t['backend']} | {t['seconds']:.2f} | {t['epochs']} | "
                         f"{t['accuracy']:.4f}{'' if t['reached'] else ' (not reached)'} |"
                         for t in tta))
steps = os.path.join(out, "steps.json")
if os.path.exists(steps):
    rec = json.load(open(steps))
    extra += ("\n\nLaunches per training step (kernels + cuBLAS calls) and wall time per step, "
              f"{rec['describe']}:\n\n| sizes | batch | launches | µs/step |\n|---|---|---|---|\n"
              + "\n".join(f"| {r['sizes']} | {r['batch']} | {r['launches_per_step_total']:.0f} "
                          f"| {r['us_per_step']:.0f} |" for r in rec["rows"]))
report.write_json(os.path.join(out, "bench.json"),
                  {"machine": machine, "rows": rows, "time_to_accuracy": tta,
                   "runs": parts, "method": [run.get("method") for run in runs]})
report.write_markdown(os.path.join(out, "bench.md"), rows, machine, extra)
try:
    report.plot_rows(rows, os.path.join(out, "bench.png"))
except ImportError as exc:
    print(f"no chart: {exc}")
tests = "not run"
xml = os.path.join(out, "gpu-tests.xml")
if os.path.exists(xml):
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    tests = (f"{s.get('tests')} tests, {s.get('failures')} failed, {s.get('errors')} errors, "
             f"{s.get('skipped')} skipped, {float(s.get('time', 0)):.0f} s")
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(f"# bench/gpu.sh\n\n{report.machine_lines(machine)}\n\nGPU tests "
            f"(BPGPU_REQUIRE_GPU=1): {tests}\n\nSteps:\n\n"
            + "".join(f"- {line}" for line in open(os.path.join(out, "steps.txt")))
            + f"\n{report.markdown_table(rows)}\n{extra}\n")
print(open(os.path.join(out, "summary.md")).read())
EOF

echo "bench/gpu.sh: done in $(( $(date +%s) - START )) s, status $STATUS; results in $OUT"
exit $STATUS
