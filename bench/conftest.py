"""pytest-benchmark configuration: the machine record goes into every saved benchmark JSON.

Run with ``pytest bench --benchmark-only`` (the plain ``pytest`` run collects only tests/).
"""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_benchmark_update_machine_info(config, machine_info):
    from bpgpu.sysinfo import machine_record
    machine_info["bpgpu"] = machine_record()


@pytest.fixture(scope="session")
def mnist_train():
    import bpgpu
    (X, y), _ = bpgpu.datasets.mnist()
    return X, y
