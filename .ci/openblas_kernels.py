"""Print the OpenBLAS kernel set numpy runs; with an argument, exit 1 unless it is that one.

``python openblas_kernels.py Haswell`` checks that OPENBLAS_CORETYPE took effect (a typo in the
variable, or a numpy built without OpenBLAS's dynamic kernel choice, would otherwise go unnoticed).
Without OpenBLAS (e.g. numpy on Accelerate or MKL) there is nothing to check and it says so.
"""

import sys

import numpy  # noqa: F401  (loads the BLAS threadpoolctl inspects)
import threadpoolctl

arch = [i.get("architecture") for i in threadpoolctl.threadpool_info()
        if i.get("internal_api") == "openblas"]
print(f"ci: OpenBLAS kernels: {', '.join(map(str, arch)) if arch else 'no OpenBLAS in numpy'}")
if len(sys.argv) > 1 and arch and any(str(a).lower() != sys.argv[1].lower() for a in arch):
    sys.exit(f"ci: expected OpenBLAS's {sys.argv[1]} kernels")
