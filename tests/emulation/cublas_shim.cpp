// The host emulation's libcublas: the five entry points bpgpu.backends.cupy_cublas calls through
// ctypes, with cublas_api.h's C signatures, each forwarding its arguments (as 64-bit words) to
// one callback that tests/emulation/fake_cublas.py registers. So the backend's ctypes code --
// argument types, pointers, byref handles -- runs exactly as against the real library; what a
// call does (on the emulated device, or recorded into a capture) is decided in Python.
#include <stddef.h>
#include <stdint.h>

typedef int (*emu_forward_t)(int call, const uint64_t* args);
static emu_forward_t forward = 0;

#define W(x) ((uint64_t)(uintptr_t)(x))      // a pointer as a word
#define S(x) ((uint64_t)(int64_t)(x))        // a (signed) integer as a word

extern "C" {

void emu_cublas_forward(emu_forward_t f) { forward = f; }

int cublasCreate_v2(void** handle) {
    uint64_t a[] = {W(handle)};
    return forward ? forward(0, a) : 1;
}

int cublasDestroy_v2(void* handle) {
    uint64_t a[] = {W(handle)};
    return forward ? forward(1, a) : 1;
}

int cublasSetStream_v2(void* handle, void* stream) {
    uint64_t a[] = {W(handle), W(stream)};
    return forward ? forward(2, a) : 1;
}

int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes) {
    uint64_t a[] = {W(handle), W(workspace), (uint64_t)bytes};
    return forward ? forward(3, a) : 1;
}

int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                 const void* A, int Atype, int lda, const void* B, int Btype, int ldb,
                 const void* beta, void* C, int Ctype, int ldc, int computeType, int algo) {
    uint64_t a[] = {W(handle), S(transa), S(transb), S(m), S(n), S(k), W(alpha), W(A), S(Atype),
                    S(lda), W(B), S(Btype), S(ldb), W(beta), W(C), S(Ctype), S(ldc),
                    S(computeType), S(algo)};
    return forward ? forward(4, a) : 1;
}

}
