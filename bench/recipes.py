"""Measure the training recipes (``bpgpu train --recipe NAME``) as a user runs them.

    python bench/recipes.py [--recipe best] [--dataset mnist,fashion-mnist] [--out bench/results]

For each dataset, runs ``bpgpu train --recipe NAME --dataset D --json ...`` as a separate process
(what a user types; the wall time is the command's, from start to exit: interpreter start, data
loading, kernel loading, training and the final test evaluation all included) and writes
``OUT/recipe-NAME-D.txt``: the command, the machine (``bpgpu.sysinfo``), the load average before
and after (the machine may be shared), the command's per-epoch lines, its test accuracy and the
wall time. The 10-minute goals of bench/NOTES.md ("Recipes") are read against these files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bpgpu.sysinfo import machine_record


def run_recipe(recipe: str, dataset: str, out_dir: Path) -> dict:
    """Run one recipe as a command; write its record; return the summary."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "bpgpu", "train", "--recipe", recipe, "--dataset", dataset,
               "--json", str(record), "--quiet"]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[2:])} failed ({res.returncode}): "
                             f"{res.stderr.strip().splitlines()[-1:]}")
        run = json.loads(record.read_text())
    history = run.get("history", {})
    summary = {"recipe": recipe, "dataset": dataset, "wall_seconds": wall,
               "test_accuracy": run["test"]["accuracy"], "epochs": len(history.get("epoch", [])),
               "train_seconds": sum(history.get("time", [])),
               "load_average": [load_before, load_after], "machine": machine_record(),
               "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset")}
    lines = [f"$ bpgpu train --recipe {recipe} --dataset {dataset}",
             f"# {summary['machine']['cpu']}, {summary['machine']['cores']} cores; "
             f"OPENBLAS_CORETYPE={summary['openblas_coretype']}; "
             f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}",
             res.stderr.strip(), res.stdout.strip(),
             f"# test accuracy {summary['test_accuracy']:.4f}, {summary['epochs']} epochs, "
             f"training {summary['train_seconds']:.1f} s, command wall time {wall:.1f} s"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"recipe-{recipe}-{dataset}.txt").write_text("\n".join(l for l in lines if l) + "\n")
    (out_dir / f"recipe-{recipe}-{dataset}.json").write_text(
        json.dumps(dict(summary, run=run), indent=1, default=str) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="best")
    p.add_argument("--dataset", default="mnist,fashion-mnist")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    print("| dataset | test accuracy | epochs | training s | command wall time |\n"
          "|---|---|---|---|---|")
    for dataset in args.dataset.split(","):
        s = run_recipe(args.recipe, dataset, Path(args.out))
        print(f"| {dataset} | {100 * s['test_accuracy']:.2f} % | {s['epochs']} | "
              f"{s['train_seconds']:.0f} | {s['wall_seconds'] / 60:.1f} min |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
