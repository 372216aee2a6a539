// Batched Sinkhorn on the GPU: one block per problem, the whole loop on-chip. K (or Cr) lives in
// shared memory when it fits, else in the caller's plan buffer, else it is recomputed from the
// cost each time. Official mode: one block per group of coupled problems.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "emd_launchers.h"
#include "sinkhorn_core.cuh"

namespace fastface {
namespace cuda {

namespace {

struct SkParams {
  const void* cost;  // (P, n, m)
  const void* a;     // (P, n)
  const void* b;     // (P, m)
  int64_t P;
  int n, m;
  double eps, tol;
  int max_iter, mode;
  int64_t group;     // official mode
  void* distance;    // (P,)
  void* plan;        // (P, n, m) or null
  void* f;           // (P, n) or null
  void* g;           // (P, m) or null
  int32_t* n_iter;
  uint8_t* converged;
};

enum KStore : int { kSmemK = 0, kPlanK = 1, kLiveK = 2 };

template <typename T>
size_t sk_smem_bytes(const Dims& d, int store) {
  size_t bytes = kRedBytes;
  if (store == kSmemK) bytes += align16(size_t(d.n) * d.ld * sizeof(T));
  return bytes + core_vec_elems(d) * sizeof(T);
}

// Threads per block from the problem size (a multiple of 32). n, m <= 64 with more than 1024
// entries get kRegThreads (K in registers).
int pick_threads(int64_t n, int64_t m) {
  const int64_t nm = n * m;
  if (nm <= 1024) return 32;
  if (n <= kRegDim && m <= kRegDim) return kRegThreads;
  if (nm <= 2048) return 64;
  if (nm <= 8192) return 128;
  return 256;
}

// Shared layout: red (32 doubles) | K buffer (n, ld) when STORE == kSmemK | solver vectors.
// REG: launched with kRegThreads threads for n, m <= kRegDim (K in registers).
template <typename T, int STORE, bool REG>
__global__ void __launch_bounds__(REG ? kRegThreads : 256, 4) sinkhorn_kernel(SkParams q) {
  FASTFACE_DYNAMIC_SMEM(smem);
  const int n = q.n, m = q.m, tid = threadIdx.x, nt = blockDim.x;
  const Dims d = make_dims(n, m, STORE == kSmemK ? (m | 1) : m, nt);
  double* red = reinterpret_cast<double*>(smem);
  T* kbuf = reinterpret_cast<T*>(smem + kRedBytes);
  const size_t kbytes = STORE == kSmemK ? align16(size_t(n) * d.ld * sizeof(T)) : 0;
  Core<T> s = carve_core(reinterpret_cast<T*>(smem + kRedBytes + kbytes), d, red);
  const int64_t nm = int64_t(n) * m;
  const T eps = T(q.eps), tol = T(q.tol);
  for (int64_t p = blockIdx.x; p < q.P; p += gridDim.x) {
    const T* a = static_cast<const T*>(q.a) + p * n;  // (n)
    const T* b = static_cast<const T*>(q.b) + p * m;  // (m)
    for (int i = tid; i < n; i += nt) s.wa[i] = a[i];
    for (int j = tid; j < m; j += nt) s.wb[j] = b[j];
    __syncthreads();
    const CostRef<T> cost{static_cast<const T*>(q.cost) + p * nm, m};  // (n, m)
    T* plan = q.plan ? static_cast<T*>(q.plan) + p * nm : nullptr;
    T* f = q.f ? static_cast<T*>(q.f) + p * n : nullptr;
    T* g = q.g ? static_cast<T*>(q.g) + p * m : nullptr;
    SolveOut r;
    if constexpr (STORE == kLiveK) {
      const LiveKS<T> ks{cost.p, m, s.alpha, s.beta, eps};
      r = solve<T, false, false>(d, ks, cost, static_cast<T*>(nullptr), s, eps, q.max_iter, tol, q.mode,
                                 plan, f, g);
    } else {
      T* buf = STORE == kSmemK ? kbuf : plan;  // kPlanK: plan (ld == m) is the scratch
      const BufKS<T> ks{buf, d.ld};
      r = solve<T, true, REG>(d, ks, cost, buf, s, eps, q.max_iter, tol, q.mode, plan, f, g);
    }
    if (tid == 0) {
      static_cast<T*>(q.distance)[p] = T(r.dist);
      q.n_iter[p] = r.iters;
      q.converged[p] = r.conv ? 1 : 0;
    }
    __syncthreads();
  }
}

// Official DeepFace-EMD loop, one block per group of G problems: K = exp(-C/eps) recomputed from
// the cost, r = a / (K c), c = b / (K^T r); the group stops when mean |r - r_prev| < tol.
// r, c of the group live in shared memory (SMEM_RC) or in each problem's plan slot (n*m >= n+m).
// Shared layout: red | part (pl) | wr (n) | wc (m) | group r, c (G * (n + m)) if SMEM_RC.
template <typename T, bool SMEM_RC>
__global__ void __launch_bounds__(256) sinkhorn_official_kernel(SkParams q) {
  FASTFACE_DYNAMIC_SMEM(smem);
  const int n = q.n, m = q.m, tid = threadIdx.x, nt = blockDim.x;
  const Dims d = make_dims(n, m, m, nt);
  double* red = reinterpret_cast<double*>(smem);
  T* part = reinterpret_cast<T*>(smem + kRedBytes);
  T* wr = part + d.pl;
  T* wc = wr + n;
  T* rc_smem = wc + m;
  const int64_t G = q.group, groups = q.P / G, nm = int64_t(n) * m;
  const T eps = T(q.eps);
  const T* cost = static_cast<const T*>(q.cost);
  const T* A = static_cast<const T*>(q.a);
  const T* B = static_cast<const T*>(q.b);
  T* plan = static_cast<T*>(q.plan);
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t first = grp * G;
    auto rvec = [&](int64_t k) -> T* {  // r (n) then c (m) of problem first + k
      if constexpr (SMEM_RC) return rc_smem + k * (n + m);
      else return plan + (first + k) * nm;
    };
    for (int64_t k = 0; k < G; ++k) {
      T* r = rvec(k);
      for (int t = tid; t < n + m; t += nt) r[t] = T(1);
    }
    __syncthreads();
    int iters = 0;
    bool stopped = false;
    for (int it = 0; it < q.max_iter; ++it) {
      double dl = 0;
      for (int64_t k = 0; k < G; ++k) {
        const T* C = cost + (first + k) * nm;  // (n, m)
        const T* a = A + (first + k) * n;
        const T* b = B + (first + k) * m;
        T* r = rvec(k);
        T* c = r + n;
        row_partials<T, SumOp>(d, [&](int i, int j) { return dexp(-C[i * m + j] / eps) * c[j]; }, part);
        __syncthreads();
        for (int i = tid; i < n; i += nt) {
          const T rn = a[i] / combine<T, SumOp>(part, d.sr, n, i);
          dl += fabs(double(rn) - double(r[i]));
          r[i] = rn;
        }
        __syncthreads();
        col_partials<T, SumOp>(d, [&](int i, int j) { return dexp(-C[i * m + j] / eps) * r[i]; }, part);
        __syncthreads();
        for (int j = tid; j < m; j += nt) c[j] = b[j] / combine<T, SumOp>(part, d.sc, m, j);
        __syncthreads();
      }
      const double delta = block_sum(dl, red);
      ++iters;
      if (delta / double(G * n) < q.tol) {
        stopped = true;
        break;
      }
    }
    for (int64_t k = 0; k < G; ++k) {
      const T* r = rvec(k);
      for (int t = tid; t < n + m; t += nt) wr[t] = r[t];  // wr, wc are contiguous
      __syncthreads();  // the plan slot may hold r, c: copy before overwriting it
      const T* C = cost + (first + k) * nm;
      T* pl = plan ? plan + (first + k) * nm : nullptr;
      double sim = 0;
      for (int idx = tid; idx < n * m; idx += nt) {
        const int i = idx / m, j = idx - i * m;
        const T v = wr[i] * dexp(-C[idx] / eps) * wc[j];
        sim += double(v) * (1.0 - double(C[idx]));
        if (pl) pl[idx] = v;
      }
      sim = block_sum(sim, red);  // its barriers also protect wr before the next copy
      if (tid == 0) {
        static_cast<T*>(q.distance)[first + k] = T(1.0 - sim);
        q.n_iter[first + k] = iters;
        q.converged[first + k] = stopped ? 1 : 0;
      }
    }
  }
}

template <typename T>
void launch_official(const SkParams& q, cudaStream_t st) {
  const int threads = pick_threads(q.n, q.m);
  const Dims d = make_dims(q.n, q.m, q.m, threads);
  const size_t base = kRedBytes + (size_t(d.pl) + q.n + q.m) * sizeof(T);
  const size_t with_rc = base + size_t(q.group) * (q.n + q.m) * sizeof(T);
  const size_t limit = max_smem_optin();
  const unsigned grid = grid_for(q.P / q.group);
  if (with_rc <= limit) {
    allow_max_smem<sinkhorn_official_kernel<T, true>>();
    launch_kernel("sinkhorn_official_kernel", sinkhorn_official_kernel<T, true>, LaunchShape{grid, threads, with_rc}, st, q);
    return check_launch("sinkhorn_official_kernel");
  }
  if (q.plan && int64_t(q.n) * q.m >= int64_t(q.n) + q.m && base <= limit) {
    allow_max_smem<sinkhorn_official_kernel<T, false>>();
    launch_kernel("sinkhorn_official_kernel", sinkhorn_official_kernel<T, false>, LaunchShape{grid, threads, base}, st, q);
    return check_launch("sinkhorn_official_kernel");
  }
  if (base > limit)
    throw std::invalid_argument("sinkhorn (cuda, official): n + m too large: " + std::to_string(base) +
                                " bytes of shared memory needed, the device allows " + std::to_string(limit));
  throw std::invalid_argument("sinkhorn (cuda, official): group * (n + m) = " +
                              std::to_string(q.group * (q.n + q.m)) +
                              " scalings do not fit in shared memory; pass a plan buffer (n, m >= 2) "
                              "or use a smaller group");
}

template <typename T>
void launch(const SinkhornArgs& args, cudaStream_t st) {
  SkParams q;
  q.cost = args.cost;
  q.a = args.a;
  q.b = args.b;
  q.P = args.P;
  q.n = int(args.n);
  q.m = int(args.m);
  q.eps = args.eps;
  q.tol = args.tol;
  q.max_iter = args.max_iter;
  q.mode = int(args.mode);
  q.group = args.group;
  q.distance = args.distance;
  q.plan = args.plan;
  q.f = args.f;
  q.g = args.g;
  q.n_iter = args.n_iter;
  q.converged = args.converged;
  if (args.mode == SinkhornMode::Official) return launch_official<T>(q, st);

  const size_t limit = max_smem_optin();
  const unsigned grid = grid_for(args.P);
  int threads = pick_threads(args.n, args.m);
  Dims d = make_dims(q.n, q.m, q.m | 1, threads);
  size_t bytes = sk_smem_bytes<T>(d, kSmemK);
  if (bytes <= limit) {
    if (std::is_same<T, float>::value && threads == kRegThreads && q.n <= kRegDim && q.m <= kRegDim) {
      allow_max_smem<sinkhorn_kernel<T, kSmemK, true>>();
      launch_kernel("sinkhorn_kernel", sinkhorn_kernel<T, kSmemK, true>, LaunchShape{grid, threads, bytes}, st, q);
    } else {
      allow_max_smem<sinkhorn_kernel<T, kSmemK, false>>();
      launch_kernel("sinkhorn_kernel", sinkhorn_kernel<T, kSmemK, false>, LaunchShape{grid, threads, bytes}, st, q);
    }
    return check_launch("sinkhorn_kernel");
  }
  // Too large for shared memory: K in the plan buffer, or recomputed from the cost.
  threads = 256;
  d = make_dims(q.n, q.m, q.m, threads);
  bytes = sk_smem_bytes<T>(d, kPlanK);
  if (bytes > limit)
    throw std::invalid_argument("sinkhorn (cuda): n + m too large: the solver vectors need " +
                                std::to_string(bytes) + " bytes of shared memory, the device allows " +
                                std::to_string(limit));
  if (args.plan) {
    allow_max_smem<sinkhorn_kernel<T, kPlanK, false>>();
    launch_kernel("sinkhorn_kernel", sinkhorn_kernel<T, kPlanK, false>, LaunchShape{grid, threads, bytes}, st, q);
  } else {
    allow_max_smem<sinkhorn_kernel<T, kLiveK, false>>();
    launch_kernel("sinkhorn_kernel", sinkhorn_kernel<T, kLiveK, false>, LaunchShape{grid, threads, bytes}, st, q);
  }
  check_launch("sinkhorn_kernel");
}

}  // namespace

void sinkhorn(const SinkhornArgs& args, void* stream) {
  if (args.P <= 0) return;
  if (args.n <= 0 || args.m <= 0)
    throw std::invalid_argument("sinkhorn (cuda): n and m must be >= 1");
  if (args.n * (args.m + 1) >= (int64_t(1) << 31))
    throw std::invalid_argument("sinkhorn (cuda): n * m too large (>= 2^31 per problem)");
  if (args.mode == SinkhornMode::Official && (args.group <= 0 || args.P % args.group != 0))
    throw std::invalid_argument("sinkhorn: P must be a multiple of group in official mode");
  const auto st = static_cast<cudaStream_t>(stream);
  if (args.dtype == DType::F32) return launch<float>(args, st);
  if (args.dtype == DType::F64) return launch<double>(args, st);
  throw std::invalid_argument("sinkhorn (cuda): dtype must be float32 or float64");
}

}  // namespace cuda
}  // namespace fastface
