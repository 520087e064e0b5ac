"""Hand-written kernels of bpgpu, installed as the subpackage ``bpgpu.kernels``.

``cpu.py`` holds the Numba kernels (imported only by the numba backend) and ``fused.cu`` the CUDA
C++ templates (read with importlib.resources by the cupy backend). Importing this package imports
neither numba nor cupy.
"""
