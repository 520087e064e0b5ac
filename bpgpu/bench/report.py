"""Benchmark output: a Markdown table, a JSON record with the machine, a chart, and the README block.

Output files are written atomically, like every file bpgpu writes.
"""

from __future__ import annotations

import json

from ..errors import UsageError
from ..files import atomic_write

__all__ = ["markdown_table", "machine_lines", "write_json", "write_markdown", "plot_rows",
           "update_readme", "check_readme", "README_MARKER", "progress_line",
           "time_to_accuracy_table"]

README_MARKER = "<!-- bench-table -->"
#: The JAX peer's forms: row-key prefix and column/legend label (bpgpu.bench.jax_ref).
JAX_PEERS = (("jax_scan", "JAX scan"), ("jax_step", "JAX step"))


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def markdown_table(rows) -> str:
    """One line per row: throughput with its spread, per-step cost, GEMM efficiency (the GEMM
    share of the timed epochs: the rest is the time outside GEMMs), vs torch,
    vs JAX's two forms when the run interleaved them (``--vs jax``: its whole-epoch scan's
    samples/s, then the ratios to the scan and to the jitted step), and vs another bpgpu backend
    when the run interleaved one (``bpgpu bench --vs torch,numpy``)."""
    jax_keys = {f"vs_{prefix}" for prefix, _ in JAX_PEERS}
    others = sorted({k[3:] for r in rows for k in r
                     if k.startswith("vs_") and k != "vs_torch" and k not in jax_keys})
    jax = any(k in r for r in rows for k in jax_keys)
    jax_head = (" jax scan samples/s |" + "".join(f" vs {label} |" for _, label in JAX_PEERS)
                if jax else "")
    n_jax = 1 + len(JAX_PEERS) if jax else 0
    counted = any("launches_per_step" in r for r in rows)     # a GPU backend's launch counts
    head = ("| backend | sizes | batch | dtype | samples/s (median, min–max) | µs/step | GFLOP/s "
            "| % of GEMM ceiling | GEMM share of time | torch samples/s | vs torch |" + jax_head
            + "".join(f" vs {o} |" for o in others)
            + (" launches/step | host calls/step |" if counted else ""))
    lines = [head, "|" + "---|" * (11 + n_jax + len(others) + 2 * counted)]
    for r in rows:
        spread = f"{r['samples_per_s_min'] / 1e3:.0f}–{r['samples_per_s_max'] / 1e3:.0f}k"
        frac = r.get("fraction_of_ceiling")
        gemm = r.get("gemm_time_fraction")
        if gemm is not None and gemm >= 1.0:
            gemm = None         # GEMM seconds >= the epoch: drift between the epochs, no figure
        torch = r.get("torch_samples_per_s")
        ratio = r.get("vs_torch")
        lines.append(
            f"| {r['backend']}{' (compiled epoch)' if r.get('compiled_epoch') else ''} "
            f"| {r['sizes']} | {r['batch']} | {r['dtype']} "
            f"| {r['samples_per_s'] / 1e3:.1f}k ({spread}) | {r['us_per_step']:.0f} "
            f"| {r['gflops']:.1f} | {_fmt(frac and 100 * frac, '.0f')} "
            f"| {_fmt(gemm and 100 * gemm, '.0f')}{'' if gemm is None else ' %'} "
            f"| {_fmt(torch and torch / 1e3, '.1f')}{'' if torch is None else 'k'} "
            f"| {_fmt(ratio, '.2f')}{'' if ratio is None else '×'} |"
            + (_jax_cells(r) if jax else "")
            + "".join(f" {_fmt(r.get('vs_' + o), '.2f')}{'×' if r.get('vs_' + o) else ''} |"
                      for o in others)
            + (f" {_fmt(r.get('launches_per_step'), '.1f')} |"
               f" {_fmt(r.get('host_calls_per_step'), '.2f')} |" if counted else ""))
    return "\n".join(lines)


def _jax_cells(r) -> str:
    """The JAX columns of one row (dashes where the row has no JAX figures)."""
    sps = r.get("jax_scan_samples_per_s")
    cells = f" {_fmt(sps and sps / 1e3, '.1f')}{'' if sps is None else 'k'} |"
    for prefix, _ in JAX_PEERS:
        v = r.get(f"vs_{prefix}")
        cells += f" {_fmt(v, '.2f')}{'' if v is None else '×'} |"
    return cells


def progress_line(row, vs_backend=None) -> str:
    """One line per measured row while a benchmark runs: samples/s and the ratios measured."""
    ratio = f"  {row['vs_torch']:.2f}x torch" if row.get("vs_torch") else ""
    for form in ("scan", "step"):
        if row.get(f"vs_jax_{form}"):
            ratio += f"  {row[f'vs_jax_{form}']:.2f}x jax {form}"
    if row.get("jax_missing"):
        ratio += f"  (no jax: {row['jax_missing']})"
    if vs_backend and row.get(f"vs_{vs_backend}"):
        ratio += f"  {row[f'vs_{vs_backend}']:.2f}x {vs_backend}"
    return (f"  {row['backend']:<6} {row['sizes']:<16} batch {row['batch']:<5} "
            f"{row['samples_per_s'] / 1e3:8.1f}k samples/s{ratio}")


def time_to_accuracy_table(results, recipe) -> str:
    """The Markdown block of time-to-accuracy results (``results``: rows of
    :func:`bpgpu.bench.runner.time_to_accuracy`, all for ``recipe``)."""
    return ("\n\nTime to 98.0 % MNIST test accuracy (recipe "
            f"{json.dumps(recipe)}, data in memory, evaluation after every epoch "
            "included):\n\n| backend | seconds | epochs | test accuracy |\n|---|---|---|---|\n"
            + "\n".join(f"| {t['backend']} | {t['seconds']:.2f} | {t['epochs']} | "
                        f"{t['accuracy']:.4f}{'' if t['reached'] else ' (not reached)'} |"
                        for t in results))


def machine_lines(machine) -> str:
    """A short Markdown description of the machine record."""
    v = machine["versions"]
    blas = ", ".join(f"{b['api']} {b['version']} ({b['threads']} threads)" for b in machine["blas"])
    gpus = "; ".join(g.get("name", "?") + (f", driver {g['driver']}, CUDA {g['cuda_runtime']}"
                                           if "cuda_runtime" in g else "")
                     for g in machine["gpus"]) or "none"
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    kernels = "; ".join(k["summary"] for k in machine.get("blas_kernels", []))
    text = (f"- date: {machine['date']}\n- CPU: {machine['cpu']}, {machine['cores']} cores\n"
            f"- BLAS: {blas or 'unknown'}" + (f"; {kernels}" if kernels else "")
            + f"\n- GPU: {gpus}\n- libraries: {libs}")
    jax = machine.get("jax")
    if jax and jax.get("available"):
        text += (f"\n- JAX: {jax['jax']} on {jax['device']}, float32, XLA intra-op threads "
                 f"{jax['intra_op_threads']} ({jax['source']})")
    return text


def write_json(path, payload):
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2, default=str).encode()))


def write_markdown(path, rows, machine, extra=""):
    text = f"# bpgpu benchmark\n\n{machine_lines(machine)}\n\n{markdown_table(rows)}\n{extra}"
    atomic_write(path, lambda f: f.write(text.encode()))


def plot_rows(rows, path):
    """samples/s by batch size: one panel per layer sizes, one line per backend, PyTorch and each
    form of JAX."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["sizes"] for r in rows}, key=lambda s: [int(x) for x in s.split("-")])
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = [r for r in rows if r["sizes"] == arch]
        for backend in sorted({r["backend"] for r in sub}):
            pts = sorted((r["batch"], r["samples_per_s"]) for r in sub if r["backend"] == backend)
            ax.plot(*zip(*pts), marker="o", label=f"bpgpu {backend}")
        for device in sorted({r.get("torch_device") for r in sub if r.get("torch_samples_per_s")}):
            pts = {}
            for r in sub:
                if r.get("torch_samples_per_s") and r.get("torch_device") == device:
                    pts[r["batch"]] = r["torch_samples_per_s"]
            ax.plot(*zip(*sorted(pts.items())), marker="s", linestyle="--",
                    label=f"PyTorch eager ({device})")
        for (prefix, label), style in zip(JAX_PEERS, (":", "-.")):
            pts = {r["batch"]: r[f"{prefix}_samples_per_s"] for r in sub
                   if r.get(f"{prefix}_samples_per_s")}
            if pts:
                ax.plot(*zip(*sorted(pts.items())), marker="^", linestyle=style,
                        label=f"{label} (cpu)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("training samples / s")
        ax.set_title(f"{arch}, {sub[0]['dtype']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def check_readme(readme) -> str:
    """The text of ``readme`` if its benchmark block can be replaced (a UTF-8 file with the
    :data:`README_MARKER` line); otherwise a UsageError saying why (checked before a run)."""
    try:
        with open(readme, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"--update-readme {readme}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--update-readme {readme}: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    except OSError as exc:
        raise UsageError(f"--update-readme {readme}: {exc.strerror or exc}") from None
    if README_MARKER not in text:
        raise UsageError(f"--update-readme {readme}: it has no {README_MARKER} line")
    return text


def update_readme(readme, markdown_path, plot_path, rows, machine,
                  command="bpgpu bench --quick --vs torch --update-readme"):
    """Replace everything after the README's bench marker with the latest table and chart;
    ``command`` is the invocation shown above the table."""
    head = check_readme(readme).split(README_MARKER)[0]
    block = (f"{README_MARKER}\nLatest run (`{command}`), "
             f"float32, one MNIST epoch per repeat, training metrics off on every side:\n\n"
             f"{machine_lines(machine)}\n\n{markdown_table(rows)}\n\n"
             f"This run: [{markdown_path}]({markdown_path}); the full matrix: "
             f"[bench/results/cpu-full.md](bench/results/cpu-full.md)\n\n![samples/s]({plot_path})\n")
    atomic_write(readme, lambda f: f.write((head + block).encode()))
