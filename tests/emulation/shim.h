// Host emulation of the CUDA built-ins that kernels/fused.cu uses: a CUDA source compiled as host
// C++ with this header force-included runs on the CPU, every block of the grid in turn and every
// thread of a block as its own fiber (own stack), so warp shuffles and __syncthreads are real
// barriers: a fiber that reaches one waits until every thread it synchronises with is there, then
// they all go on. A shuffle that not every lane of its warp reaches (a lane exited, or called a
// different shuffle) is an error, as is a deadlock; so is any access that faults (the Python side
// puts guard pages after every device buffer): the launch stops and says where.
//
// This is a safety net for the kernels' logic and indexing, not a model of a GPU's timing, memory
// ordering or floating-point library (host libm differs from CUDA's in the last bits).
#pragma once

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static   // blocks run one after another: one copy serves each block in turn

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {

enum class Wait { None, Warp, Block, Done, Failed };

struct Fiber {
    ucontext_t ctx;                // where a fiber starts (makecontext)
    jmp_buf env;                   // where it resumes after its first yield
    bool started = false;
    Wait wait = Wait::None;
    unsigned tid = 0;
    long long tag = 0;             // which shuffle (lane mask and width) it waits in
    unsigned long long value = 0;  // the bits it offers to the shuffle
};

struct Runtime {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_size = 256 * 1024;
    unsigned max_threads = 0;
    unsigned nthreads = 0;
    int current = -1;
    ucontext_t start_template;     // getcontext once; each fiber's start is a copy of it
    bool have_template = false;
    jmp_buf main_env;              // the scheduler, where a yielding fiber returns to
    std::function<void()> body;
    char* err = nullptr;
    int errlen = 0;
    sigjmp_buf fault_env;
    volatile sig_atomic_t faulted = 0;
    void* fault_addr = nullptr;
    unsigned fault_block = 0, fault_thread = 0;
    unsigned cur_block = 0;
};
inline Runtime rt;

inline void set_error(const char* fmt, unsigned a = 0, unsigned b = 0, long long c = 0) {
    if (rt.err && rt.err[0] == 0) snprintf(rt.err, rt.errlen, fmt, a, b, c);
}

// Fiber switches: a fiber starts on its own stack once (x86-64: by moving the stack pointer and
// calling entry(); elsewhere through makecontext/swapcontext); after that, fiber and scheduler
// pass control with _setjmp/_longjmp between the two stacks, which saves no signal mask: no system
// call per switch (a training step starts thousands of fibers and switches millions of times).

// fiber side: leave the CPU to the scheduler until it resumes this fiber
inline void yield_as(Wait w) {
    Fiber& f = rt.fibers[rt.current];
    f.wait = w;
    if (!_setjmp(f.env)) _longjmp(rt.main_env, 1);
}

inline void entry() {
    rt.body();
    yield_as(Wait::Done);
}

// scheduler side: run fiber f until it yields
inline void resume(Fiber& f) {
    if (!_setjmp(rt.main_env)) {
        if (!f.started) {
            f.started = true;
#if defined(__x86_64__)
            // start on the fiber's own stack with no system call: the registers the scheduler
            // needs are saved in main_env, so the stack pointer may simply move; entry() never
            // returns (it ends with a _longjmp back to main_env)
            char* top = (char*)f.ctx.uc_stack.ss_sp + f.ctx.uc_stack.ss_size;
            top = (char*)((uintptr_t)top & ~(uintptr_t)15);
            asm volatile("mov %0, %%rsp\n\tcall *%1\n\tud2" : : "r"(top), "r"(&entry)
                         : "memory");
#else
            ucontext_t here;
            swapcontext(&here, &f.ctx);   // never returns: the fiber comes back by _longjmp
#endif
        } else {
            _longjmp(f.env, 1);
        }
    }
}

inline void fail(const char* fmt, unsigned a = 0, unsigned b = 0, long long c = 0) {
    set_error(fmt, a, b, c);
    yield_as(Wait::Failed);   // never resumed
}

inline void on_fault(int, siginfo_t* info, void*) {
    rt.faulted = 1;
    rt.fault_addr = info->si_addr;
    rt.fault_block = rt.cur_block;
    rt.fault_thread = rt.current >= 0 ? (unsigned)rt.current : 0u;
    siglongjmp(rt.fault_env, 1);
}

// the warp's exchange: every lane offers `bits`, gets lane `src`'s; two barriers, so no lane
// overwrites its offer before every lane of the warp has read
inline unsigned long long exchange(unsigned mask, unsigned long long bits, int lane_mask,
                                   int width, int mode) {
    Fiber& me = rt.fibers[rt.current];
    unsigned lane = me.tid & 31, warp = me.tid >> 5;
    if (mask != 0xffffffffu) fail("shuffle with lane mask %#x: only full warps are emulated", mask);
    if (width != 32) fail("shuffle of width %u: only width 32 is emulated", (unsigned)width);
    if ((warp + 1) * 32 > rt.nthreads)
        fail("full-warp shuffle in warp %u, which has only %u threads", warp,
             rt.nthreads - warp * 32);
    me.value = bits;
    me.tag = ((long long)mode << 40) | ((long long)width << 32) | (unsigned)lane_mask;
    yield_as(Wait::Warp);
    unsigned src = mode == 0 ? (lane ^ (unsigned)lane_mask) : (unsigned)lane_mask;
    unsigned long long got = rt.fibers[warp * 32 + (src & 31)].value;
    yield_as(Wait::Warp);
    return got;
}

template <typename T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T> inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// Runs the grid: blocks in order, each block's threads as fibers until all are done. Returns 0,
// or 1 with a message in err (a barrier error), or 2 for a fault (address in the message).
inline int launch(const unsigned* grid, const unsigned* block, char* err, int errlen,
                  std::function<void()> body) {
    rt.err = err;
    rt.errlen = errlen;
    if (errlen > 0) err[0] = 0;
    unsigned nthreads = block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        block[2] > 64 || grid[1] > 65535 || grid[2] > 65535) {
        set_error("invalid launch configuration: grid (%u, ...), %u threads per block", grid[0],
                  nthreads);
        return 1;
    }
    if (nthreads > rt.max_threads) {
        if (rt.stacks) munmap(rt.stacks, rt.max_threads * rt.stack_size);
        rt.stacks = (char*)mmap(nullptr, nthreads * rt.stack_size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (rt.stacks == MAP_FAILED) {
            rt.stacks = nullptr;
            rt.max_threads = 0;
            set_error("cannot map fiber stacks");
            return 1;
        }
        rt.max_threads = nthreads;
        rt.fibers.resize(nthreads);
    }
    rt.nthreads = nthreads;
    rt.body = std::move(body);
    rt.current = -1;
    rt.faulted = 0;

    static char alt_stack[1 << 16];
    stack_t ss{}, old_ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof(alt_stack);
    sigaltstack(&ss, &old_ss);
    struct sigaction sa {}, old_segv{}, old_bus{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    int status = 0;
    if (sigsetjmp(rt.fault_env, 1)) {
        snprintf(err, errlen, "memory fault at address %p in block %u, thread %u",
                 rt.fault_addr, rt.fault_block, rt.fault_thread);
        status = 2;
    } else {
        gridDim = dim3{grid[0], grid[1], grid[2]};
        blockDim = dim3{block[0], block[1], block[2]};
        unsigned nblocks = grid[0] * grid[1] * grid[2];
        for (unsigned b = 0; b < nblocks && status == 0; ++b) {
            rt.cur_block = b;
            blockIdx = dim3{b % grid[0], (b / grid[0]) % grid[1], b / (grid[0] * grid[1])};
#if !defined(__x86_64__)
            if (!rt.have_template) {
                getcontext(&rt.start_template);
                rt.have_template = true;
            }
#endif
            for (unsigned t = 0; t < nthreads; ++t) {
                Fiber& f = rt.fibers[t];
                f.tid = t;
                f.wait = Wait::None;
                f.started = false;
#if !defined(__x86_64__)
                f.ctx = rt.start_template;
                f.ctx.uc_link = nullptr;
#endif
                f.ctx.uc_stack.ss_sp = rt.stacks + (size_t)t * rt.stack_size;
                f.ctx.uc_stack.ss_size = rt.stack_size;
#if !defined(__x86_64__)
                makecontext(&f.ctx, entry, 0);
#endif
            }
            for (;;) {
                for (unsigned t = 0; t < nthreads; ++t) {   // run every runnable fiber
                    Fiber& f = rt.fibers[t];
                    if (f.wait != Wait::None) continue;
                    rt.current = (int)t;
                    threadIdx = dim3{t % block[0], (t / block[0]) % block[1],
                                     t / (block[0] * block[1])};
                    resume(f);
                    rt.current = -1;
                    if (f.wait == Wait::Failed) { status = 1; break; }
                }
                if (status) break;
                // everyone now waits or is done: release complete barriers, or find an error
                unsigned done = 0, at_block = 0;
                bool released = false;
                for (unsigned t = 0; t < nthreads; ++t) {
                    done += rt.fibers[t].wait == Wait::Done;
                    at_block += rt.fibers[t].wait == Wait::Block;
                }
                if (done == nthreads) break;
                if (at_block == nthreads) {
                    for (unsigned t = 0; t < nthreads; ++t) rt.fibers[t].wait = Wait::None;
                    continue;
                }
                for (unsigned w = 0; w * 32 < nthreads && status == 0; ++w) {
                    unsigned lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
                    unsigned at_warp = 0;
                    for (unsigned t = lo; t < hi; ++t) at_warp += rt.fibers[t].wait == Wait::Warp;
                    if (at_warp == 0) continue;
                    if (at_warp != hi - lo) {
                        for (unsigned t = lo; t < hi; ++t)
                            if (rt.fibers[t].wait != Wait::Warp) {
                                set_error("warp %u of block %u: lane %lld exited or waits "
                                          "elsewhere while the others wait in a shuffle "
                                          "(divergent shuffle)", w, b, (long long)(t - lo));
                                status = 1;
                                break;
                            }
                        break;
                    }
                    for (unsigned t = lo + 1; t < hi; ++t)
                        if (rt.fibers[t].tag != rt.fibers[lo].tag) {
                            set_error("warp %u of block %u: lanes wait in different shuffles "
                                      "(lane %lld differs from lane 0)", w, b,
                                      (long long)(t - lo));
                            status = 1;
                        }
                    for (unsigned t = lo; t < hi; ++t) rt.fibers[t].wait = Wait::None;
                    released = true;
                }
                if (status) break;
                if (!released) {
                    set_error("deadlock in block %u: %u threads wait at __syncthreads, the "
                              "rest exited or wait elsewhere", b, at_block);
                    status = 1;
                }
            }
        }
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);
    rt.body = nullptr;
    return status;
}

}  // namespace emu

// ------------------------------------------------------------------------ CUDA device built-ins
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), lane_mask, width, 0));
}

template <typename T> inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return emu::from_bits<T>(emu::exchange(mask, emu::to_bits(v), src_lane, width, 1));
}

inline void __syncthreads() { emu::yield_as(emu::Wait::Block); }

inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}

// the grid runs on one host thread, one fiber at a time: a plain read-modify-write is atomic
template <typename T> inline T atomicAdd(T* address, T v) {
    T old = *address;
    *address = old + v;
    return old;
}
