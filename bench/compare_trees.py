"""Two copies of bpgpu measured side by side: ``bpgpu bench`` rows, the trees interleaved.

For a change that must not cost speed (a refactor), install the old tree somewhere
(``pip install --no-deps --target OLD_SITE OLD_CHECKOUT``) and run::

    python bench/compare_trees.py --old-site OLD_SITE --rounds 5 -- \\
        --backends numba --sizes 784-100-10,784-1024-10 --batch-sizes 64,256,1024 --epochs 3

Every round runs each row once with the old tree and once with the current one (alternating
which goes first), each as its own ``bpgpu bench`` process (warm-up epoch included), and the
table gives, per row, both medians and the median of the per-round ratios new / old (> 1: the new
tree is faster). Absolute times drift by tens of percent within minutes on these machines; the
per-round ratio of neighbouring runs is what cancels the drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def _bench(site, argv, out):
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bpgpu", "bench", "--quiet", "--json", out] + argv
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    with open(out) as f:
        return json.load(f)["rows"]


def _rows(argv):
    """One ``bpgpu bench`` argument list per row (sizes x batch) of ``argv``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--sizes")
    p.add_argument("--batch-sizes")
    known, rest = p.parse_known_args(argv)
    return [(s, b, rest + ["--sizes", s, "--batch-sizes", b])
            for s in known.sizes.split(",") for b in known.batch_sizes.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-site", required=True, help="where the old tree is installed")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", metavar="PATH", help="write every measurement here")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then bpgpu bench's arguments")
    args = p.parse_args(argv)
    bench_argv = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        for sizes, batch, row_argv in _rows(bench_argv):
            old, new = [], []
            for r in range(args.rounds):
                order = (("old", args.old_site), ("new", None))
                for name, site in (order if r % 2 == 0 else order[::-1]):
                    sps = _bench(site, row_argv, out)[0]["samples_per_s"]
                    (old if name == "old" else new).append(sps)
            ratios = [n / o for n, o in zip(new, old)]
            results.append({"sizes": sizes, "batch": int(batch), "old": old, "new": new,
                            "ratio_median": statistics.median(ratios)})
            print(f"{sizes:<14} b{batch:<5} old {statistics.median(old) / 1e3:7.1f}k  new "
                  f"{statistics.median(new) / 1e3:7.1f}k samples/s  new/old "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": bench_argv, "rounds": args.rounds, "rows": results,
                       "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
