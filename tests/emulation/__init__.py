"""Host emulation of the CUDA kernels: kernels/fused.cu compiled as host C++ and driven through
the real CupyBackend, compared with the numpy backend (marker ``emulated``)."""
