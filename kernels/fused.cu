// Fused CUDA kernels of bpgpu's cupy backend: one pass over memory per op of the training step.
//
// Templates over the float type T with explicit float and double instantiations at the end (so
// `nvcc -c` for a target architecture compiles every kernel; CuPy compiles the same source with
// NVRTC and looks the instantiations up by name), plus one extern "C" kernel (random_uniform,
// float32 only). Shapes, dtypes and contiguity of every array of a launch are validated together
// in Python before the launch (bpgpu/backends/cupy_backend.py): a kernel never checks bounds.
//
// Two shapes of kernel:
// - Elementwise kernels use a grid-stride loop, so that any grid covers any array: the launcher
//   caps the grid at a few blocks per SM instead of one thread per element. Where a kernel needs
//   the (row, column) of a flat index, it divides once per thread and then steps the pair along
//   with the loop (RowCol below): no 64-bit division or remainder per element.
// - Per-row reductions (softmax, its backward pass, the output delta with the loss, the argmax
//   count) give each row to one warp: lanes stride over the columns, shuffles combine them, and
//   warps stride over the rows. Launch them with a block size that is a multiple of 32.
//
// Activation and loss codes are not written here: they come from bpgpu.activations.ACT_CODES /
// LOSS_CODES as -D defines (bpgpu.backends.cupy_backend.compile_options), the one table shared
// with the CPU kernels.

#if !defined(BPGPU_ACT_IDENTITY) || !defined(BPGPU_ACT_SIGMOID) || !defined(BPGPU_ACT_TANH) || \
    !defined(BPGPU_ACT_RELU) || !defined(BPGPU_ACT_SOFTMAX) || !defined(BPGPU_LOSS_MSE) ||    \
    !defined(BPGPU_LOSS_BCE) || !defined(BPGPU_LOSS_CE)
#error "compile with the -D options of bpgpu.backends.cupy_backend.compile_options()"
#endif

#define FULL_WARP 0xffffffffu

// Grid-stride loop over [0, n): covers any n with any grid (see the header).
#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Warp-per-row loop: each warp takes rows warp, warp + n_warps, ...; every lane of a warp runs
// the same rows, so the shuffles inside stay converged. `lane` is the thread's lane.
#define WARP_PER_ROW(r, rows, lane)                                                            \
    const int lane = threadIdx.x & 31;                                                         \
    for (long long r = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; r < (rows);   \
         r += ((long long)blockDim.x * gridDim.x) >> 5)

template <typename T> __device__ __forceinline__ T exp_t(T x);
template <> __device__ __forceinline__ float exp_t<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double exp_t<double>(double x) { return exp(x); }
template <typename T> __device__ __forceinline__ T tanh_t(T x);
template <> __device__ __forceinline__ float tanh_t<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ double tanh_t<double>(double x) { return tanh(x); }
template <typename T> __device__ __forceinline__ T log_t(T x);
template <> __device__ __forceinline__ float log_t<float>(float x) { return logf(x); }
template <> __device__ __forceinline__ double log_t<double>(double x) { return log(x); }
template <typename T> __device__ __forceinline__ T sqrt_t(T x);
template <> __device__ __forceinline__ float sqrt_t<float>(float x) { return sqrtf(x); }
template <> __device__ __forceinline__ double sqrt_t<double>(double x) { return sqrt(x); }
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return nanf(""); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return nan(""); }

// the sum of v over the warp, the same bits in every lane (xor butterfly: each step adds the
// same two operands in every lane pair)
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    return v;
}

// the maximum of v over the warp; NaN wins, as numpy's max (symmetric, so every lane agrees)
template <typename T> __device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(FULL_WARP, v, o);
        if (w > v || w != w) v = w;
    }
    return v;
}

// numpy's argmax order: NaN above everything, then larger values; ties go to the first index.
// A total order, so the warp's reduction gives the same answer in any order.
template <typename T> __device__ __forceinline__ bool beats(T v, int i, T best, int best_i) {
    bool v_nan = v != v, best_nan = best != best;
    if (v_nan || best_nan) return v_nan && (!best_nan || i < best_i);
    return v > best || (v == best && i < best_i);
}

template <typename T> __device__ __forceinline__ void warp_argmax(T& v, int& i) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(FULL_WARP, v, o);
        int j = __shfl_xor_sync(FULL_WARP, i, o);
        if (beats(w, j, v, i)) { v = w; i = j; }
    }
}

// (row, column) of the grid-stride loop's flat index over a (rows, cols) C-contiguous array:
// one division per thread, then stepped along with the loop.
struct RowCol {
    long long r;
    int c, step_r, step_c, cols;
    __device__ __forceinline__ explicit RowCol(int cols_) : cols(cols_) {
        unsigned start = blockIdx.x * blockDim.x + threadIdx.x;   // < 2^31: grids are capped
        unsigned step = blockDim.x * gridDim.x;
        r = start / (unsigned)cols;
        c = int(start % (unsigned)cols);
        step_r = int(step / (unsigned)cols);
        step_c = int(step % (unsigned)cols);
    }
    __device__ __forceinline__ void next() {
        r += step_r;
        c += step_c;
        if (c >= cols) { c -= cols; ++r; }
    }
};

template <typename T> __device__ __forceinline__ T activate(T v, int act, T exp_limit) {
    if (act == BPGPU_ACT_SIGMOID) {
        T e = -v;
        if (e > exp_limit) e = exp_limit;                  // exp never overflows; NaN passes
        return T(1) / (T(1) + exp_t(e));
    }
    if (act == BPGPU_ACT_TANH) return tanh_t(v);
    if (act == BPGPU_ACT_RELU) return v < T(0) ? T(0) : v;  // NaN passes through
    return v;
}

// act'(a) from the saved output a, times d (relu: d * 0 where a <= 0, so inf/NaN stay NaN)
template <typename T> __device__ __forceinline__ T derivative_times(T d, T a, int act) {
    if (act == BPGPU_ACT_SIGMOID) return d * (a * (T(1) - a));
    if (act == BPGPU_ACT_TANH) return d * (T(1) - a * a);
    if (act == BPGPU_ACT_RELU) return a > T(0) ? d : d * T(0);
    return d;
}

// z = act(z + b) over a (n / cols, cols) C-contiguous array; softmax is bias_softmax
template <typename T>
__global__ void bias_activation(T* z, const T* b, long long n, int cols, int act, T exp_limit) {
    RowCol rc(cols);
    GRID_STRIDE(i, n) {
        z[i] = activate(z[i] + b[rc.c], act, exp_limit);
        rc.next();
    }
}

// z = softmax(z + b) per row (log-sum-exp shift: exp never overflows), one warp per row. The
// first pass only reads (every lane starts its maximum from element 0, which no lane may have
// overwritten yet: lanes of a warp are not in lockstep); each lane then writes only its columns.
template <typename T>
__global__ void bias_softmax(T* z, const T* b, long long rows, int cols) {
    WARP_PER_ROW(r, rows, lane) {
        T* row = z + r * cols;
        T m = row[0] + b[0];
        for (int j = lane; j < cols; j += 32) {
            T v = row[j] + b[j];
            if (v > m || v != v) m = v;
        }
        m = warp_max(m);
        T s = T(0);
        for (int j = lane; j < cols; j += 32) {
            T e = exp_t((row[j] + b[j]) - m);
            row[j] = e;
            s += e;
        }
        s = warp_sum(s);
        for (int j = lane; j < cols; j += 32) row[j] = row[j] / s;
    }
}

// the sigmoid-delta family: delta *= act'(a), the derivative taken from the saved output a
template <typename T>
__global__ void activation_backward(T* delta, const T* a, long long n, int act) {
    GRID_STRIDE(i, n) delta[i] = derivative_times(delta[i], a[i], act);
}

// softmax Jacobian-vector product per row: delta = a * (delta - sum(delta * a)), a warp per row
template <typename T>
__global__ void softmax_backward(T* delta, const T* a, long long rows, int cols) {
    WARP_PER_ROW(r, rows, lane) {
        T* d = delta + r * cols;
        const T* o = a + r * cols;
        T s = T(0);
        for (int j = lane; j < cols; j += 32) s += d[j] * o[j];
        s = warp_sum(s);
        for (int j = lane; j < cols; j += 32) d[j] = o[j] * (d[j] - s);
    }
}

// Output delta of the mean batch loss, one warp per row: ce/bce give (a - y) * inv_b; mse gives
// (a - y) * inv_b times act'(a) (softmax: its Jacobian product). With want_loss, the summed
// per-sample loss (in double) is added to *loss_acc: one atomic per warp. With weighted, row r's
// delta is then multiplied by w[r] and its loss counts w[r] times (Backend.output_delta's
// weights; w is not read otherwise).
template <typename T>
__global__ void output_delta(const T* a, const T* y, T* delta, long long rows, int cols,
                             int out_act, int loss, T inv_b, T tiny, T one_minus_eps,
                             double* loss_acc, int want_loss, const T* w, int weighted) {
    double part = 0.0;
    bool any = false;
    WARP_PER_ROW(r, rows, lane) {
        any = true;
        const T* ar = a + r * cols;
        const T* yr = y + r * cols;
        T* dr = delta + r * cols;
        T s = T(0);
        double row_part = 0.0;
        for (int j = lane; j < cols; j += 32) {
            T o = ar[j], t = yr[j];
            T g = (o - t) * inv_b;
            if (loss == BPGPU_LOSS_CE) {
                if (want_loss) row_part -= double(t * log_t(o < tiny ? tiny : o));
            } else if (loss == BPGPU_LOSS_BCE) {
                if (want_loss) {
                    T p = o < tiny ? tiny : (o > one_minus_eps ? one_minus_eps : o);
                    row_part -= double(t * log_t(p) + (T(1) - t) * log_t(T(1) - p));
                }
            } else {
                if (want_loss) row_part += 0.5 * double((o - t) * (o - t));
                if (out_act == BPGPU_ACT_SOFTMAX) s += g * o;
                else g = derivative_times(g, o, out_act);
            }
            dr[j] = g;
        }
        if (loss == BPGPU_LOSS_MSE && out_act == BPGPU_ACT_SOFTMAX) {
            s = warp_sum(s);
            for (int j = lane; j < cols; j += 32) dr[j] = ar[j] * (dr[j] - s);
        }
        if (weighted) {                    // lane-local: each lane scales what it wrote
            const T wr = w[r];
            for (int j = lane; j < cols; j += 32) dr[j] *= wr;
            row_part *= double(wr);
        }
        part += row_part;
    }
    if (want_loss) {                       // warp-uniform: every lane of a warp gets here
        part = warp_sum(part);
        if (any && (threadIdx.x & 31) == 0) atomicAdd(loss_acc, part);
    }
}

// Adds to *acc the rows whose argmax (numpy's: first maximum, NaN first) matches the target's;
// with one output, the rows on the same side of 0.5. One warp per row, one atomic per warp.
template <typename T>
__global__ void count_correct(const T* a, const T* y, long long rows, int cols, double* acc) {
    long long hits = 0;
    WARP_PER_ROW(r, rows, lane) {
        const T* ar = a + r * cols;
        const T* yr = y + r * cols;
        if (cols == 1) {
            hits += (ar[0] >= T(0.5)) == (yr[0] >= T(0.5));
            continue;
        }
        T va = ar[0], vy = yr[0];
        int ia = 0, iy = 0;
        for (int j = lane; j < cols; j += 32) {
            if (beats(ar[j], j, va, ia)) { va = ar[j]; ia = j; }
            if (beats(yr[j], j, vy, iy)) { vy = yr[j]; iy = j; }
        }
        warp_argmax(va, ia);
        warp_argmax(vy, iy);
        hits += ia == iy;
    }
    if ((threadIdx.x & 31) == 0 && hits) atomicAdd(acc, double(hits));
}

// out[r, :] = data[idx[r], :] * scale + shift, uint8 rows straight into the float batch. A row
// index outside [0, data_rows) gives a row of NaN (never a read out of bounds), which training
// reports as divergence.
template <typename T>
__global__ void gather_scale(const unsigned char* data, const long long* idx, T* out, long long n,
                             int cols, long long data_rows, T scale, T shift) {
    RowCol rc(cols);
    GRID_STRIDE(i, n) {
        long long src = idx[rc.r];
        out[i] = (src >= 0 && src < data_rows) ? T(data[src * cols + rc.c]) * scale + shift
                                               : quiet_nan<T>();
        rc.next();
    }
}

template <typename T>
__global__ void gather(const T* data, const long long* idx, T* out, long long n, int cols,
                       long long data_rows) {
    RowCol rc(cols);
    GRID_STRIDE(i, n) {
        long long src = idx[rc.r];
        out[i] = (src >= 0 && src < data_rows) ? data[src * cols + rc.c] : quiet_nan<T>();
        rc.next();
    }
}

// The augmented batch gather (bpgpu.backends.base.Backend.gather_augmented is the contract, formula
// by formula, in double as there): out[b] = warp_b(data[idx[b]]), optionally * scale + shift.
// One block per image (blocks stride over the batch). The block's thread 0 turns the image's six
// uniforms into its transform and shares it through shared memory; then the threads stride over
// the image's pixels, stepping (row, column) along with no division per pixel. Two paths, chosen
// per launch: translation and mirror only (a whole-pixel copy with zero fill, the plain gather's
// arithmetic, so its values equal gather_scale's), or the sampling map with bilinear
// interpolation and zero fill, plus the elastic field where there is one. A stale row index (the
// launcher checks the index buffer once) gives a row of NaN, never a read out of bounds.
template <typename S, typename T>
__device__ __forceinline__ void warp_images(const S* data, const long long* idx, T* out,
                                            const float* uniform, const T* field, bool has_field,
                                            long long rows, long long data_rows, int height,
                                            int width, int translate, double rotate, double zoom,
                                            double shear, double flip, T scale, T shift,
                                            bool scaled) {
    __shared__ double t[7];               // tx, ty, mirror, a00, a01, a10, a11
    const int n = height * width;
    const bool affine = rotate != 0.0 || zoom != 0.0 || shear != 0.0 || has_field;
    const double span = 2.0 * translate + 1.0;
    const double cx = (width - 1) / 2.0, cy = (height - 1) / 2.0;
    const T fill = scaled ? T(0) * scale + shift : T(0);      // a 0 pixel, as the gather maps it
    const int dr = blockDim.x / width, dq = blockDim.x % width;
    const int r0 = threadIdx.x / width, q0 = threadIdx.x % width;
    for (long long b = blockIdx.x; b < rows; b += gridDim.x) {
        if (threadIdx.x == 0) {
            const float* u = uniform + b * 8;
            t[0] = floor(double(u[0]) * span) - translate;
            t[1] = floor(double(u[1]) * span) - translate;
            t[2] = double(u[5]) < flip ? -1.0 : 1.0;
            double theta = (2.0 * double(u[2]) - 1.0) * rotate;
            double s = 1.0 + (2.0 * double(u[3]) - 1.0) * zoom;
            double h = (2.0 * double(u[4]) - 1.0) * shear;
            double c = cos(theta), sn = sin(theta);
            t[3] = (c + h * sn) / s;
            t[4] = (sn - h * c) / s;
            t[5] = -sn / s;
            t[6] = c / s;
        }
        __syncthreads();
        const double tx = t[0], ty = t[1], m = t[2];
        const double a00 = t[3], a01 = t[4], a10 = t[5], a11 = t[6];
        __syncthreads();                  // every thread has read t: thread 0 may overwrite it
        T* dst = out + b * n;
        const long long row = idx[b];
        if (row < 0 || row >= data_rows) {
            for (int p = threadIdx.x; p < n; p += blockDim.x) dst[p] = quiet_nan<T>();
            continue;
        }
        const S* src = data + row * n;
        const T* fx_field = has_field ? field + b * 2 * n : field;
        const int itx = int(tx), ity = int(ty);
        int r = r0, q = q0;
        for (int p = threadIdx.x; p < n; p += blockDim.x) {
            T value;
            if (!affine) {                // column q reads q - tx, or (width - 1) - q - tx mirrored
                int sr = r - ity;
                int sq = (m < 0.0 ? width - 1 - q : q) - itx;
                if (sr >= 0 && sr < height && sq >= 0 && sq < width) {
                    S v = src[sr * width + sq];
                    value = scaled ? T(v) * scale + shift : T(v);
                } else {
                    value = fill;
                }
            } else {
                double X = m * (q - cx) - tx;
                double Y = (r - cy) - ty;
                double sx = (a00 * X + a01 * Y) + cx;
                double sy = (a10 * X + a11 * Y) + cy;
                if (has_field) {
                    sx = sx + double(fx_field[p]);
                    sy = sy + double(fx_field[n + p]);
                }
                // out-of-range (or NaN) coordinates read nothing
                if (!(sx >= -2.0)) sx = -2.0; else if (sx > width + 1.0) sx = width + 1.0;
                if (!(sy >= -2.0)) sy = -2.0; else if (sy > height + 1.0) sy = height + 1.0;
                double fx0 = floor(sx), fy0 = floor(sy);
                double fx = sx - fx0, fy = sy - fy0;
                int x0 = int(fx0), y0 = int(fy0);
                bool in_x0 = x0 >= 0 && x0 < width, in_x1 = x0 + 1 >= 0 && x0 + 1 < width;
                bool in_y0 = y0 >= 0 && y0 < height, in_y1 = y0 + 1 >= 0 && y0 + 1 < height;
                double p00 = in_y0 && in_x0 ? double(src[y0 * width + x0]) : 0.0;
                double p01 = in_y0 && in_x1 ? double(src[y0 * width + x0 + 1]) : 0.0;
                double p10 = in_y1 && in_x0 ? double(src[(y0 + 1) * width + x0]) : 0.0;
                double p11 = in_y1 && in_x1 ? double(src[(y0 + 1) * width + x0 + 1]) : 0.0;
                double v = (1.0 - fy) * ((1.0 - fx) * p00 + fx * p01)
                           + fy * ((1.0 - fx) * p10 + fx * p11);
                value = scaled ? T(v) * scale + shift : T(v);
            }
            dst[p] = value;
            q += dq;
            r += dr;
            if (q >= width) {
                q -= width;
                ++r;
            }
        }
    }
}

template <typename T>
__global__ void gather_augmented_scale(const unsigned char* data, const long long* idx, T* out,
                                       const float* uniform, const T* field, int has_field,
                                       long long rows, long long data_rows, int height, int width,
                                       int translate, double rotate, double zoom, double shear,
                                       double flip, T scale, T shift) {
    warp_images<unsigned char, T>(data, idx, out, uniform, field, has_field != 0, rows, data_rows,
                                  height, width, translate, rotate, zoom, shear, flip, scale,
                                  shift, true);
}

template <typename T>
__global__ void gather_augmented(const T* data, const long long* idx, T* out,
                                 const float* uniform, const T* field, int has_field,
                                 long long rows, long long data_rows, int height, int width,
                                 int translate, double rotate, double zoom, double shear,
                                 double flip) {
    warp_images<T, T>(data, idx, out, uniform, field, has_field != 0, rows, data_rows, height,
                      width, translate, rotate, zoom, shear, flip, T(1), T(0), false);
}

// inverted dropout: mask = (u >= rate) * keep_scale; out = a * mask
template <typename T>
__global__ void dropout_forward(const T* a, const float* u, float rate, T keep_scale, T* mask,
                                T* out, long long n) {
    GRID_STRIDE(i, n) {
        T m = u[i] >= rate ? keep_scale : T(0);
        mask[i] = m;
        out[i] = a[i] * m;
    }
}

template <typename T>
__global__ void multiply_inplace(T* x, const T* m, long long n) {
    GRID_STRIDE(i, n) x[i] *= m[i];
}

// optimizers over the one flat parameter buffer; weights (the first n_decay entries) decay.
// g + wd * p only where wd is nonzero: as the reference, so 0 * inf never turns into NaN
template <typename T> __device__ __forceinline__ T decayed(T g, T p, T wd, bool decays) {
    return (decays && wd != T(0)) ? g + wd * p : g;
}

template <typename T>
__global__ void sgd_update(T* p, const T* g, T lr, T wd, long long n_decay, long long n) {
    GRID_STRIDE(k, n) {
        T gk = decayed(g[k], p[k], wd, k < n_decay);
        p[k] -= lr * gk;
    }
}

template <typename T>
__global__ void momentum_update(T* p, const T* g, T* v, T lr, T mu, T wd, long long n_decay,
                                long long n, int nesterov) {
    GRID_STRIDE(k, n) {
        T gk = decayed(g[k], p[k], wd, k < n_decay);
        T vk = mu * v[k] + gk;
        v[k] = vk;
        p[k] -= lr * (nesterov ? gk + mu * vk : vk);
    }
}

template <typename T>
__global__ void adam_update(T* p, const T* g, T* m, T* v, T lr_t, T b1, T c1, T b2, T c2, T eps,
                            T inv_bias2, T wd, long long n_decay, long long n) {
    GRID_STRIDE(k, n) {
        T gk = decayed(g[k], p[k], wd, k < n_decay);
        T mk = b1 * m[k] + c1 * gk;
        T vk = b2 * v[k] + c2 * gk * gk;
        m[k] = mk;
        v[k] = vk;
        p[k] -= lr_t * mk / (sqrt_t(vk * inv_bias2) + eps);
    }
}

// ---------------------------------------------------------------------------- random numbers
// numpy's Philox4x64-10 (Random123): 10 rounds, the key bumped between rounds.
__device__ __forceinline__ void philox4x64_10(unsigned long long& x0, unsigned long long& x1,
                                              unsigned long long& x2, unsigned long long& x3,
                                              unsigned long long k0, unsigned long long k1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B97F4A7C15ull;
            k1 += 0xBB67AE8584CAA73Bull;
        }
        unsigned long long hi0 = __umul64hi(0xD2E7470EE14C6C93ull, x0);
        unsigned long long lo0 = 0xD2E7470EE14C6C93ull * x0;
        unsigned long long hi1 = __umul64hi(0xCA5A826395121157ull, x2);
        unsigned long long lo1 = 0xCA5A826395121157ull * x2;
        unsigned long long y0 = hi1 ^ x1 ^ k0, y2 = hi0 ^ x3 ^ k1;
        x0 = y0;
        x1 = lo1;
        x2 = y2;
        x3 = lo0;
    }
}

// out[i] = element (offset + i) of the float32 stream of numpy's Generator(Philox(key, counter))
// .random(dtype=float32). The stream comes in blocks of 8 floats; block b is Philox of the
// 256-bit counter + 1 + b (numpy increments before it draws). The launcher passes c = counter +
// 1 + offset / 8 (carried in Python) and first = offset % 8: thread j computes block j from the
// counter c + j (carry across the four words) and writes its elements that fall in [0, n).
// Each 64-bit word gives two floats, low half first: (word32 >> 8) * 2^-24, as numpy.
extern "C" __global__ void random_uniform(float* out, long long n, int first,
                                          unsigned long long k0, unsigned long long k1,
                                          unsigned long long c0, unsigned long long c1,
                                          unsigned long long c2, unsigned long long c3) {
    long long blocks = (first + n + 7) >> 3;
    GRID_STRIDE(j, blocks) {
        unsigned long long x0 = c0 + (unsigned long long)j;
        unsigned long long carry = x0 < c0;
        unsigned long long x1 = c1 + carry;
        carry = carry & (x1 == 0);
        unsigned long long x2 = c2 + carry;
        carry = carry & (x2 == 0);
        unsigned long long x3 = c3 + carry;
        philox4x64_10(x0, x1, x2, x3, k0, k1);
        unsigned long long w[4] = {x0, x1, x2, x3};
        long long base = j * 8 - first;
        #pragma unroll
        for (int q = 0; q < 8; ++q) {
            long long i = base + q;
            if (i >= 0 && i < n) {
                unsigned word = (q & 1) ? (unsigned)(w[q >> 1] >> 32) : (unsigned)w[q >> 1];
                out[i] = float(word >> 8) * (1.0f / 16777216.0f);
            }
        }
    }
}

// explicit instantiations: float and double
#define INSTANTIATE(T)                                                                         \
    template __global__ void bias_activation<T>(T*, const T*, long long, int, int, T);        \
    template __global__ void bias_softmax<T>(T*, const T*, long long, int);                    \
    template __global__ void activation_backward<T>(T*, const T*, long long, int);            \
    template __global__ void softmax_backward<T>(T*, const T*, long long, int);               \
    template __global__ void output_delta<T>(const T*, const T*, T*, long long, int, int, int, \
                                             T, T, T, double*, int, const T*, int);            \
    template __global__ void count_correct<T>(const T*, const T*, long long, int, double*);   \
    template __global__ void gather_scale<T>(const unsigned char*, const long long*, T*,       \
                                             long long, int, long long, T, T);                 \
    template __global__ void gather<T>(const T*, const long long*, T*, long long, int,        \
                                       long long);                                             \
    template __global__ void gather_augmented_scale<T>(const unsigned char*, const long long*,  \
                                                       T*, const float*, const T*, int,         \
                                                       long long, long long, int, int, int,     \
                                                       double, double, double, double, T, T);   \
    template __global__ void gather_augmented<T>(const T*, const long long*, T*, const float*, \
                                                 const T*, int, long long, long long, int, int, \
                                                 int, double, double, double, double);          \
    template __global__ void dropout_forward<T>(const T*, const float*, float, T, T*, T*,      \
                                                long long);                                    \
    template __global__ void multiply_inplace<T>(T*, const T*, long long);                    \
    template __global__ void sgd_update<T>(T*, const T*, T, T, long long, long long);         \
    template __global__ void momentum_update<T>(T*, const T*, T*, T, T, T, long long,         \
                                                long long, int);                               \
    template __global__ void adam_update<T>(T*, const T*, T*, T*, T, T, T, T, T, T, T, T,     \
                                            long long, long long);

INSTANTIATE(float)
INSTANTIATE(double)
