#!/usr/bin/env bash
# One command that validates and benchmarks a GPU from a clean checkout:
#
#     bash bench/gpu.sh OUTDIR [--only STEP,...]
#
# Made for a machine with no network that already holds Python 3.12, numpy, cupy-cuda13x 14.2,
# torch 2.11 (CUDA 13), numba, matplotlib and pytest; sized for a ~15-minute GPU lease: the first
# run ends within BPGPU_GPU_BUDGET seconds (default 300), the most important figures first, every
# step's results written under OUTDIR as soon as it ends (a cut-off run keeps what it did), and
# `--only STEP,...` reruns chosen steps (each under 4 minutes). Steps (each logged to
# OUTDIR/<step>.log, each with a time cap, later steps run even if an earlier failed):
#
#   0. a usable GPU, checked first (bpgpu's cupy probe: driver, device, an NVRTC-compiled kernel,
#      one cuBLAS GEMM); without one it stops at once: one line on stderr, exit status 2
#   install          pip install --no-deps --no-build-isolation -e .  (nothing is downloaded)
#   machine          bpgpu info --json, nvidia-smi                -> machine.json, nvidia-smi.txt
#   steps            launches and µs per step, eager and CUDA graph (BPGPU_CUDA_GRAPH=0 / 1),
#                    784-100-10 at batch 64, 256, 1024 and 784-1024-10 at 8192 -> steps.json
#   gpu-tests        every GPU-marked test, BPGPU_REQUIRE_GPU=1 (a skip fails) -> gpu-tests.xml
#   bench-gpu-small  bpgpu bench: cupy beside PyTorch eager on the GPU, 784-100-10 at batch 64,
#                    256, 1024, 8192                              -> bench-gpu-small.json
#   bench-gpu-wide   784-1024-10 at 8192 with the cuBLAS ceiling; time to 98 %
#   bench-cpu        numba beside PyTorch on the CPU (last: it is what a tight budget cuts)
#   report           everything merged      -> bench.json, bench.md, bench.png, summary.md
#
# BPGPU_GPU_ROWS (default: all 60000) trains the steps step on fewer MNIST rows: the dry run of
# the tests (tests/test_gpu.py, the host emulation standing in for CuPy) uses it.
#
# Exit status: 0 when every step passed, 1 when any failed or ran out of time, 2 for bad usage or
# no GPU. PYTHON names the interpreter (default python3).

set -u
STEPS="install machine steps gpu-tests bench-gpu-small bench-gpu-wide bench-cpu report"
usage() {
    echo "usage: bash bench/gpu.sh OUTDIR [--only STEP,...] (installs bpgpu here, runs the GPU" \
         "tests and the GPU benchmark, writes the results into OUTDIR; steps: ${STEPS// /,})" >&2
    exit 2
}
[ $# -ge 1 ] && [ -n "$1" ] && [ "${1#-}" = "$1" ] || usage
OUTDIR=$1
shift
ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --only) [ $# -ge 2 ] || usage; ONLY=$2; shift 2 ;;
        --only=*) ONLY=${1#--only=}; shift ;;
        *) usage ;;
    esac
done
for step in ${ONLY//,/ }; do
    case " $STEPS " in *" $step "*) ;; *) echo "bench/gpu.sh: unknown step '$step' (steps:" \
        "${STEPS// /,})" >&2; exit 2 ;; esac
done
# wanted NAME: true when NAME runs in this invocation (all steps without --only)
wanted() { [ -z "$ONLY" ] || case ",$ONLY," in *",$1,"*) true ;; *) false ;; esac; }
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

mkdir -p "$OUTDIR" || exit 2
OUT=$(cd "$OUTDIR" && pwd)
export PYTHONUNBUFFERED=1
START=$(date +%s)
STATUS=0
[ -n "$ONLY" ] && [ -f "$OUT/steps.txt" ] || : >"$OUT/steps.txt"    # a rerun appends

# The whole run must end within BUDGET seconds (5 minutes by default: a 15-minute lease holds the
# machine's start, this run and a rerun with --only). Each step has its own cap, further cut to
# what is left of the budget minus the report's RESERVE; a step with under 15 s left is skipped
# (and the run fails).
BUDGET=${BPGPU_GPU_BUDGET:-300}
RESERVE=20

# run NAME CAP_SECONDS COMMAND...: logs to OUT/NAME.log, records the outcome in steps.txt
run() {
    local name=$1 cap=$2
    shift 2
    local t0 rc left
    wanted "$name" || return 0
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

# --- install (no network: no dependencies, no build isolation)
run install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .

# --- the machine
run machine 20 sh -c "\"$PY\" -m bpgpu info --json >\"$OUT/machine.json\" && \"$PY\" -m bpgpu info"
if wanted machine && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
fi

# --- launches and microseconds per step, eager and as a CUDA graph (CUDA-synchronised wall
#     clock; the most important figures: first). steps.json is rewritten after every row.
run steps 75 "$PY" - "$OUT/steps.json" <<'EOF'
import json
import os
import sys
import time

import bpgpu
from bpgpu.backends import cupy_graph, get_backend
from bpgpu.warmup import warmup

be = get_backend("cupy")
record = {"describe": be.describe(), "warmup": warmup(be), "rows": []}
(X, y), _ = bpgpu.datasets.mnist()
rows = int(os.environ.get("BPGPU_GPU_ROWS", len(X)))
X, y = X[:rows], y[:rows]
for sizes, batch in (([784, 100, 10], 64), ([784, 100, 10], 256), ([784, 100, 10], 1024),
                     ([784, 1024, 10], 8192)):
    for mode in ("0", "1"):
        with be.compiled_epoch_mode(mode):
            net = bpgpu.MLP(sizes, backend=be, seed=0)
            net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)  # warm-up
            be._launches.clear()
            before, calls = dict(cupy_graph.STATS), be._host_calls
            be.synchronize()
            t0 = time.perf_counter()
            net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)
            be.synchronize()
            wall = time.perf_counter() - t0
        steps = -(-len(X) // batch)
        per_step = {k: v / steps for k, v in sorted(be._launches.items())}
        row = {"sizes": "-".join(map(str, sizes)), "batch": batch, "steps": steps,
               "mode": "graph" if mode == "1" else "eager",
               "graph_epochs": cupy_graph.STATS["graph_epochs"] - before["graph_epochs"],
               "launches_per_step": per_step, "launches_per_step_total": sum(per_step.values()),
               "host_calls_per_step": (be._host_calls - calls) / steps,
               "us_per_step": wall / steps * 1e6, "samples_per_s": len(X) / wall}
        record["rows"].append(row)
        print(f"{row['sizes']:<12} batch {batch:<5} {row['mode']:<5} "
              f"({row['graph_epochs']} graph epochs) "
              f"{row['launches_per_step_total']:.0f} nodes per step, "
              f"{row['host_calls_per_step']:.2f} host calls per step, "
              f"{row['us_per_step']:.0f} us per step, {row['samples_per_s'] / 1e3:.0f}k samples/s")
        with open(sys.argv[1] + ".tmp", "w") as f:
            json.dump(record, f, indent=2, default=str)
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
EOF

# --- the GPU tests: every gpu-marked test of the suite; a skip fails
run gpu-tests 150 env BPGPU_REQUIRE_GPU=1 "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" tests

# --- the GPU matrix: cupy vs PyTorch eager and graphed, and JAX's jitted scan and step on the same
# GPU where jax has its CUDA plugins (epochs interleaved), ceiling, 98 %. JAX would otherwise take
# 75 % of the GPU's memory at its first call, before CuPy and PyTorch allocate.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PEERS=torch
if "$PY" -c "import jax" >/dev/null 2>&1; then PEERS=torch,jax; fi
run bench-gpu-small 60 "$PY" -m bpgpu bench --backends cupy --vs "$PEERS" --sizes 784-100-10 \
    --batch-sizes 64,256,1024,8192 --epochs 3 --json "$OUT/bench-gpu-small.json"
run bench-gpu-wide 45 "$PY" -m bpgpu bench --backends cupy --vs torch --sizes 784-1024-10 \
    --batch-sizes 8192 --epochs 3 --time-to-accuracy --json "$OUT/bench-gpu-wide.json"

# --- numba beside PyTorch on the CPU, same matrix
if "$PY" -c "import numba" >/dev/null 2>&1; then
    run bench-cpu 45 "$PY" -m bpgpu bench --backends numba --vs torch \
        --sizes 784-100-10,784-1024-10 --batch-sizes 64,256,1024,8192 --epochs 2 \
        --json "$OUT/bench-cpu.json"
elif wanted bench-cpu; then
    echo "bench-cpu: skipped (numba is not installed)" | tee -a "$OUT/steps.txt"
fi

# --- one JSON, one table, one chart, and a summary
run report 20 "$PY" - "$OUT" <<'EOF'
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
              f"{rec['describe']}:\n\n| sizes | batch | path | launches | host calls | µs/step |"
              "\n|---|---|---|---|---|---|\n"
              + "\n".join(f"| {r['sizes']} | {r['batch']} | {r.get('mode', 'eager')} | "
                          f"{r['launches_per_step_total']:.0f} | "
                          f"{r.get('host_calls_per_step', 0):.2f} | {r['us_per_step']:.0f} |"
                          for r in rec["rows"]))
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
