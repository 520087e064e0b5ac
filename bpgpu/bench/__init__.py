"""Benchmark harness: every backend against PyTorch eager and against the hardware's ceiling.

``bpgpu bench`` and the pytest-benchmark suite in ``bench/`` both run through :func:`run_matrix`.
Every figure is measured after warm-up, with device synchronisation inside the timed region, and
carries the machine record (:func:`bpgpu.sysinfo.machine_record`) it was measured on.
"""

from .runner import BenchCase, run_case, run_matrix
from .workload import step_bytes, step_flops

__all__ = ["BenchCase", "run_case", "run_matrix", "step_flops", "step_bytes"]
