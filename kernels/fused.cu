// Fused CUDA kernels of bpgpu's cupy backend: one pass over memory per op of the training step.
//
// Templates over the float type T with explicit float and double instantiations at the end (so
// `nvcc -c` for a target architecture compiles every kernel; CuPy compiles the same source with
// NVRTC and looks the instantiations up by name). Every kernel uses a grid-stride loop so that any
// grid size covers any array size: the launcher caps the grid at a few blocks per SM instead of
// one thread per element. Shapes, dtypes and contiguity are validated in Python before launch.
//
// Activation codes: 0 identity, 1 sigmoid, 2 tanh, 3 relu. Loss codes: 0 mse, 1 bce, 2 ce.

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

template <typename T> __device__ __forceinline__ T exp_t(T x);
template <> __device__ __forceinline__ float exp_t<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double exp_t<double>(double x) { return exp(x); }
template <typename T> __device__ __forceinline__ T tanh_t(T x);
template <> __device__ __forceinline__ float tanh_t<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ double tanh_t<double>(double x) { return tanh(x); }
template <typename T> __device__ __forceinline__ T log_t(T x);
template <> __device__ __forceinline__ float log_t<float>(float x) { return logf(x); }
template <> __device__ __forceinline__ double log_t<double>(double x) { return log(x); }
// exp(-z) overflows past these; clipping there changes sigmoid by less than the type's tiny
template <typename T> __device__ __forceinline__ T exp_limit();
template <> __device__ __forceinline__ float exp_limit<float>() { return 88.0f; }
template <> __device__ __forceinline__ double exp_limit<double>() { return 708.0; }

// z = act(z + b), elementwise over a (rows, cols) C-contiguous array
template <typename T>
__global__ void bias_activation(T* z, const T* b, long long rows, int cols, int act) {
    GRID_STRIDE(i, rows * cols) {
        T v = z[i] + b[i % cols];
        if (act == 1) {
            T e = -v;
            if (e > exp_limit<T>()) e = exp_limit<T>();      // NaN passes through
            v = T(1) / (T(1) + exp_t(e));
        } else if (act == 2) {
            v = tanh_t(v);
        } else if (act == 3) {
            v = v < T(0) ? T(0) : v;                         // NaN passes through
        }
        z[i] = v;
    }
}

// softmax(z + b) per row, one thread per row (output layers are narrow)
template <typename T>
__global__ void bias_softmax(T* z, const T* b, long long rows, int cols) {
    GRID_STRIDE(r, rows) {
        T* row = z + r * cols;
        T m = row[0] + b[0];
        for (int j = 0; j < cols; ++j) {
            T v = row[j] + b[j];
            row[j] = v;
            m = v > m ? v : m;
        }
        T s = T(0);
        for (int j = 0; j < cols; ++j) {
            T e = exp_t(row[j] - m);
            row[j] = e;
            s += e;
        }
        T inv = T(1) / s;
        for (int j = 0; j < cols; ++j) row[j] *= inv;
    }
}

// the sigmoid-delta family: delta *= act'(a), the derivative taken from the saved output a
template <typename T>
__global__ void activation_backward(T* delta, const T* a, long long n, int act) {
    GRID_STRIDE(i, n) {
        T o = a[i];
        if (act == 1) delta[i] *= o * (T(1) - o);
        else if (act == 2) delta[i] *= T(1) - o * o;
        else if (act == 3) { if (!(o > T(0))) delta[i] *= T(0); }
    }
}

// softmax Jacobian-vector product per row: delta = a * (delta - sum(delta * a))
template <typename T>
__global__ void softmax_backward(T* delta, const T* a, long long rows, int cols) {
    GRID_STRIDE(r, rows) {
        T* d = delta + r * cols;
        const T* o = a + r * cols;
        T s = T(0);
        for (int j = 0; j < cols; ++j) s += d[j] * o[j];
        for (int j = 0; j < cols; ++j) d[j] = o[j] * (d[j] - s);
    }
}

// Output delta of the mean batch loss, and (when want_loss) its summed loss added to *loss_acc.
// ce/bce: (a - y) / B; mse: (a - y) / B times act'(a) (softmax: its Jacobian product).
template <typename T>
__global__ void output_delta(const T* a, const T* y, T* delta, long long rows, int cols,
                             int out_act, int loss, T tiny, T one_minus_eps, double* loss_acc,
                             int want_loss) {
    T inv_b = T(1) / T(rows);
    GRID_STRIDE(r, rows) {
        const T* ar = a + r * cols;
        const T* yr = y + r * cols;
        T* dr = delta + r * cols;
        double part = 0.0;
        T s = T(0);
        for (int j = 0; j < cols; ++j) {
            T o = ar[j], t = yr[j];
            T g = (o - t) * inv_b;
            if (loss == 2) {
                if (want_loss && t != T(0)) part -= double(t * log_t(o < tiny ? tiny : o));
            } else if (loss == 1) {
                if (want_loss) {
                    T p = o < tiny ? tiny : (o > one_minus_eps ? one_minus_eps : o);
                    part -= double(t * log_t(p) + (T(1) - t) * log_t(T(1) - p));
                }
            } else {
                if (want_loss) part += 0.5 * double((o - t) * (o - t));
                if (out_act == 1) g *= o * (T(1) - o);
                else if (out_act == 2) g *= T(1) - o * o;
                else if (out_act == 3) { if (!(o > T(0))) g *= T(0); }
                else if (out_act == 4) s += g * o;
            }
            dr[j] = g;
        }
        if (loss == 0 && out_act == 4)
            for (int j = 0; j < cols; ++j) dr[j] = ar[j] * (dr[j] - s);
        if (want_loss) atomicAdd(loss_acc, part);
    }
}

// rows whose argmax matches the target's (one output: both on the same side of 0.5)
template <typename T>
__global__ void count_correct(const T* a, const T* y, long long rows, int cols, double* acc) {
    GRID_STRIDE(r, rows) {
        const T* ar = a + r * cols;
        const T* yr = y + r * cols;
        bool hit;
        if (cols == 1) {
            hit = (ar[0] >= T(0.5)) == (yr[0] >= T(0.5));
        } else {
            int ka = 0, ky = 0;
            for (int j = 1; j < cols; ++j) {
                if (ar[j] > ar[ka]) ka = j;
                if (yr[j] > yr[ky]) ky = j;
            }
            hit = ka == ky;
        }
        if (hit) atomicAdd(acc, 1.0);
    }
}

// out[i, :] = data[idx[i], :] * scale + shift, uint8 rows straight into the float batch
template <typename T>
__global__ void gather_scale(const unsigned char* data, const long long* idx, T* out,
                             long long rows, int cols, T scale, T shift) {
    GRID_STRIDE(i, rows * cols) {
        long long r = i / cols;
        int c = int(i - r * cols);
        out[i] = T(data[idx[r] * cols + c]) * scale + shift;
    }
}

template <typename T>
__global__ void gather(const T* data, const long long* idx, T* out, long long rows, int cols) {
    GRID_STRIDE(i, rows * cols) {
        long long r = i / cols;
        int c = int(i - r * cols);
        out[i] = data[idx[r] * cols + c];
    }
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

// optimizers over the one flat parameter buffer; weights (the first n_decay entries) decay
template <typename T>
__global__ void sgd_update(T* p, const T* g, T lr, T wd, long long n_decay, long long n) {
    GRID_STRIDE(k, n) {
        T gk = g[k] + (k < n_decay ? wd : T(0)) * p[k];
        p[k] -= lr * gk;
    }
}

template <typename T>
__global__ void momentum_update(T* p, const T* g, T* v, T lr, T mu, T wd, long long n_decay,
                                long long n, int nesterov) {
    GRID_STRIDE(k, n) {
        T gk = g[k] + (k < n_decay ? wd : T(0)) * p[k];
        T vk = mu * v[k] + gk;
        v[k] = vk;
        p[k] -= lr * (nesterov ? gk + mu * vk : vk);
    }
}

template <typename T>
__global__ void adam_update(T* p, const T* g, T* m, T* v, T lr_t, T b1, T c1, T b2, T c2, T eps,
                            T inv_bias2, T wd, long long n_decay, long long n) {
    GRID_STRIDE(k, n) {
        T gk = g[k] + (k < n_decay ? wd : T(0)) * p[k];
        T mk = b1 * m[k] + c1 * gk;
        T vk = b2 * v[k] + c2 * gk * gk;
        m[k] = mk;
        v[k] = vk;
        p[k] -= lr_t * mk / (sqrt(vk * inv_bias2) + eps);
    }
}

// explicit instantiations: float and double
#define INSTANTIATE(T)                                                                        \
    template __global__ void bias_activation<T>(T*, const T*, long long, int, int);          \
    template __global__ void bias_softmax<T>(T*, const T*, long long, int);                   \
    template __global__ void activation_backward<T>(T*, const T*, long long, int);           \
    template __global__ void softmax_backward<T>(T*, const T*, long long, int);              \
    template __global__ void output_delta<T>(const T*, const T*, T*, long long, int, int, int, \
                                             T, T, double*, int);                             \
    template __global__ void count_correct<T>(const T*, const T*, long long, int, double*);  \
    template __global__ void gather_scale<T>(const unsigned char*, const long long*, T*,      \
                                             long long, int, T, T);                           \
    template __global__ void gather<T>(const T*, const long long*, T*, long long, int);       \
    template __global__ void dropout_forward<T>(const T*, const float*, float, T, T*, T*,     \
                                                long long);                                   \
    template __global__ void multiply_inplace<T>(T*, const T*, long long);                   \
    template __global__ void sgd_update<T>(T*, const T*, T, T, long long, long long);        \
    template __global__ void momentum_update<T>(T*, const T*, T*, T, T, T, long long,        \
                                                long long, int);                              \
    template __global__ void adam_update<T>(T*, const T*, T*, T*, T, T, T, T, T, T, T, T,    \
                                            long long, long long);

INSTANTIATE(float)
INSTANTIATE(double)
