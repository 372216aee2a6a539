// Batched Sinkhorn on the GPU, one block per problem, the whole loop on-chip.
// Auto / kernel / log modes: K (or Cr) in registers (float32, n, m <= 64), in shared memory up to
// the device's opt-in maximum, else in the caller's plan buffer.
// Official mode: K in shared memory when it fits, else recomputed from the cost; the blocks of a
// group of coupled problems run together (a cooperative launch) and sum their |r - r_prev|
// through global memory every iteration, so that the group stops together exactly as
// fastface/reference/sinkhorn.py does. The plan is written only when asked for.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "emd_launchers.h"
#include "sinkhorn_core.cuh"
#include "smem_limits.h"

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

// Threads per block from the problem size (a multiple of 32). n, m <= 64 with more than 1024
// entries get kRegThreads (K in registers for float32).
int pick_threads(int64_t n, int64_t m) {
  const int64_t nm = n * m;
  if (nm <= 1024) return 32;
  if (n <= kRegDim && m <= kRegDim) return kRegThreads;
  if (nm <= 2048) return 64;
  if (nm <= 8192) return 128;
  return 256;
}

constexpr int kPlanKThreads = 256;  // K in the plan buffer: large problems

// ---- auto / kernel / log modes ----

// Shared layout of sinkhorn_kernel: red (32 doubles) | K buffer (n, ld) if K_SMEM | solver vectors.
template <typename T>
size_t solver_smem_bytes(const Dims& d, bool k_in_smem) {
  size_t bytes = kRedBytes;
  if (k_in_smem) bytes += align16(size_t(d.n) * d.ld * sizeof(T));
  return bytes + core_vec_elems(d) * sizeof(T);
}

// The launch for an (n, m) problem: K in shared memory (odd row stride: conflict-free columns)
// when it fits `limit`, else in the plan buffer (row stride m, the plan's own).
struct SolverLaunch {
  int threads;
  Dims d;
  size_t bytes;
  bool k_in_smem;
};

template <typename T>
SolverLaunch solver_launch(int n, int m, size_t limit) {
  SolverLaunch s;
  s.threads = pick_threads(n, m);
  s.d = make_dims(n, m, m | 1, s.threads);
  s.bytes = solver_smem_bytes<T>(s.d, true);
  s.k_in_smem = s.bytes <= limit;
  if (!s.k_in_smem) {
    s.threads = kPlanKThreads;
    s.d = make_dims(n, m, m, s.threads);
    s.bytes = solver_smem_bytes<T>(s.d, false);
  }
  return s;
}

// REG: launched with kRegThreads threads for n, m <= kRegDim (K in registers), float32 only.
template <typename T, bool K_SMEM, bool REG>
__global__ void __launch_bounds__(REG ? kRegThreads : kPlanKThreads, REG ? 4 : 1) sinkhorn_kernel(SkParams q) {
  FASTFACE_DYNAMIC_SMEM(smem);
  const int n = q.n, m = q.m, tid = threadIdx.x, nt = blockDim.x;
  const Dims d = make_dims(n, m, K_SMEM ? (m | 1) : m, nt);
  double* red = reinterpret_cast<double*>(smem);
  T* k_smem = reinterpret_cast<T*>(smem + kRedBytes);  // (n, ld) if K_SMEM
  const size_t k_bytes = K_SMEM ? align16(size_t(n) * d.ld * sizeof(T)) : 0;
  Core<T> core = carve_core(reinterpret_cast<T*>(smem + kRedBytes + k_bytes), d, red);
  const int64_t nm = int64_t(n) * m;
  const T eps = T(q.eps), tol = T(q.tol);
  for (int64_t p = blockIdx.x; p < q.P; p += gridDim.x) {
    const T* a = static_cast<const T*>(q.a) + p * n;  // (n)
    const T* b = static_cast<const T*>(q.b) + p * m;  // (m)
    for (int i = tid; i < n; i += nt) core.wa[i] = a[i];
    for (int j = tid; j < m; j += nt) core.wb[j] = b[j];
    __syncthreads();
    const CostRef<T> cost{static_cast<const T*>(q.cost) + p * nm, m};  // (n, m)
    T* plan = q.plan ? static_cast<T*>(q.plan) + p * nm : nullptr;
    T* f = q.f ? static_cast<T*>(q.f) + p * n : nullptr;
    T* g = q.g ? static_cast<T*>(q.g) + p * m : nullptr;
    T* k_buf = K_SMEM ? k_smem : plan;  // !K_SMEM: the plan (ld == m) is the scratch
    const SolveOut result = solve_problem<T, REG>(d, cost, k_buf, core, eps, q.max_iter, tol, q.mode, plan, f, g);
    if (tid == 0) {
      static_cast<T*>(q.distance)[p] = T(result.dist);
      q.n_iter[p] = result.iters;
      q.converged[p] = result.conv ? 1 : 0;
    }
    __syncthreads();
  }
}

template <typename T, bool K_SMEM, bool REG>
void launch_solver(const SkParams& q, const SolverLaunch& s, cudaStream_t st) {
  allow_max_smem<sinkhorn_kernel<T, K_SMEM, REG>>();
  launch_kernel("sinkhorn_kernel", sinkhorn_kernel<T, K_SMEM, REG>, LaunchShape{grid_for(q.P), s.threads, s.bytes},
                st, q);
}

template <typename T>
void launch(const SkParams& q, cudaStream_t st) {
  const size_t limit = max_smem_optin();
  const SolverLaunch s = solver_launch<T>(q.n, q.m, limit);
  if (s.bytes > limit)
    throw std::invalid_argument("sinkhorn (cuda): n + m too large: the solver vectors need " +
                                std::to_string(s.bytes) + " bytes of shared memory, the device allows " +
                                std::to_string(limit));
  if (s.k_in_smem) {
    if constexpr (std::is_same<T, float>::value) {
      if (s.threads == kRegThreads && q.n <= kRegDim && q.m <= kRegDim)
        return launch_solver<T, true, true>(q, s, st);
    }
    return launch_solver<T, true, false>(q, s, st);
  }
  if (!q.plan)
    throw std::invalid_argument("sinkhorn (cuda): K of an (" + std::to_string(q.n) + ", " + std::to_string(q.m) +
                                ") problem does not fit in shared memory: pass a plan buffer as scratch "
                                "(see sinkhorn_needs_plan)");
  launch_solver<T, false, false>(q, s, st);
}

// ---- official mode ----

// A team: the `size` co-resident blocks that run one group of problems (problem k of the group
// on block k % size). arrivals (teams in flight) counts the blocks that reached each iteration's
// exchange; sums (teams, 2, size) holds each block's |dr| sum, double-buffered by iteration.
// rc (P, n + m): the scalings r, c when they do not fit in shared memory.
struct OfficialTeam {
  int size;
  unsigned long long* arrivals;
  double* sums;
  void* rc;
};

// Shared layout of sinkhorn_official_kernel: red | part (part_len) | wr (n) | wc (m) | r, c of this
// block's problems (members * (n + m)) if RC_SMEM | K of its problems (members, n, m | 1) if K_SMEM.
template <typename T>
__host__ __device__ inline size_t official_k_offset(const Dims& d, int64_t members) {
  return align16(kRedBytes + (size_t(d.part_len) + d.n + d.m) * sizeof(T) + size_t(members) * (d.n + d.m) * sizeof(T));
}

template <typename T>
size_t official_smem_bytes(const Dims& d, int64_t members, bool rc_smem, bool k_smem) {
  if (k_smem) return official_k_offset<T>(d, members) + size_t(members) * d.n * (d.m | 1) * sizeof(T);
  return kRedBytes + (size_t(d.part_len) + d.n + d.m) * sizeof(T) +
         (rc_smem ? size_t(members) * (d.n + d.m) * sizeof(T) : 0);
}

// Sum of v over the blocks of a team, the same (fixed-order) value in every thread of every block:
// each block publishes its value, then waits for the others (the team is co-resident). `epoch`
// counts this block's exchanges: each parity's slots are rewritten only two exchanges later, when
// every block has read them.
__device__ double team_sum(double v, const OfficialTeam& team, int64_t slot, int rank, unsigned long long epoch,
                           double* red) {
  double* vals = team.sums + (slot * 2 + (epoch & 1u)) * team.size;
  if (threadIdx.x == 0) {
    vals[rank] = v;
    __threadfence();
    atomicAdd(team.arrivals + slot, 1ull);
    while (atomicAdd(team.arrivals + slot, 0ull) < epoch * (unsigned long long)team.size) __nanosleep(100);
    __threadfence();
  }
  __syncthreads();
  if (threadIdx.x < 32) {  // warp 0: lane-strided sums, then a fixed shuffle tree
    double s = 0;
    for (int r = int(threadIdx.x); r < team.size; r += 32) s += __ldcg(vals + r);
    s = warp_sum(s);
    if (threadIdx.x == 0) red[0] = s;
  }
  __syncthreads();
  const double total = red[0];
  __syncthreads();
  return total;
}

// Official DeepFace-EMD loop: K = exp(-C/eps) (kept in shared memory with K_SMEM, else recomputed
// from the cost), r = a / (K c), c = b / (K^T r); the group stops when mean |r - r_prev| over its
// G * n entries < tol. K_SMEM needs RC_SMEM.
template <typename T, bool RC_SMEM, bool K_SMEM>
__global__ void __launch_bounds__(256, 1) sinkhorn_official_kernel(SkParams q, OfficialTeam team) {
  FASTFACE_DYNAMIC_SMEM(smem);
  const int n = q.n, m = q.m, tid = threadIdx.x, nt = blockDim.x;
  const Dims d = make_dims(n, m, m, nt);
  double* red = reinterpret_cast<double*>(smem);
  T* part = reinterpret_cast<T*>(smem + kRedBytes);
  T* wr = part + d.part_len;
  T* wc = wr + n;
  T* rc_smem = wc + m;
  const int64_t G = q.group, groups = q.P / G, nm = int64_t(n) * m;
  const int rank = int(blockIdx.x % unsigned(team.size));
  const int64_t first_slot = blockIdx.x / unsigned(team.size), slots = gridDim.x / unsigned(team.size);
  const T eps = T(q.eps);
  const T* cost = static_cast<const T*>(q.cost);
  const T* A = static_cast<const T*>(q.a);
  const T* B = static_cast<const T*>(q.b);
  const int ldk = m | 1;  // odd row stride of K in shared memory: conflict-free columns
  T* k_smem = reinterpret_cast<T*>(smem + official_k_offset<T>(d, (G + team.size - 1) / team.size));
  unsigned long long epoch = 0;  // team exchanges so far
  for (int64_t grp = first_slot; grp < groups; grp += slots) {
    const int64_t first = grp * G;
    auto rc_of = [&](int64_t k) -> T* {  // r (n) then c (m) of problem first + k (k % size == rank)
      if constexpr (RC_SMEM) return rc_smem + (k / team.size) * (n + m);
      else return static_cast<T*>(team.rc) + (first + k) * (n + m);
    };
    auto k_of = [&](int64_t k) {  // K(i, j) of problem first + k
      const T* C = cost + (first + k) * nm;  // (n, m)
      const T* K = k_smem + (k / team.size) * n * ldk;
      return [=](int i, int j) -> T {
        if constexpr (K_SMEM) return K[i * ldk + j];
        else return dexp(-C[i * m + j] / eps);
      };
    };
    for (int64_t k = rank; k < G; k += team.size) {
      T* r = rc_of(k);
      for (int t = tid; t < n + m; t += nt) r[t] = T(1);
      if constexpr (K_SMEM) {
        const T* C = cost + (first + k) * nm;
        T* K = k_smem + (k / team.size) * n * ldk;
        for (int idx = tid; idx < n * m; idx += nt) {
          const int i = idx / m, j = idx - i * m;
          K[i * ldk + j] = dexp(-C[idx] / eps);
        }
      }
    }
    __syncthreads();
    int iters = 0;
    bool stopped = false;
    for (int it = 0; it < q.max_iter; ++it) {
      double dr = 0;
      for (int64_t k = rank; k < G; k += team.size) {
        const auto K = k_of(k);
        const T* a = A + (first + k) * n;
        const T* b = B + (first + k) * m;
        T* r = rc_of(k);
        T* c = r + n;
        row_partials<T, SumOp>(d, [&](int i, int j) { return K(i, j) * c[j]; }, part);
        __syncthreads();
        for (int i = tid; i < n; i += nt) {
          const T r_new = a[i] / combine<T, SumOp>(part, d.row_chunks, n, i);
          dr += fabs(double(r_new) - double(r[i]));
          r[i] = r_new;
        }
        __syncthreads();
        col_partials<T, SumOp>(d, [&](int i, int j) { return K(i, j) * r[i]; }, part);
        __syncthreads();
        for (int j = tid; j < m; j += nt) c[j] = b[j] / combine<T, SumOp>(part, d.col_chunks, m, j);
        __syncthreads();
      }
      double delta = block_sum(dr, red);
      if (team.size > 1) delta = team_sum(delta, team, first_slot, rank, ++epoch, red);
      ++iters;
      if (delta / double(G * n) < q.tol) {
        stopped = true;
        break;
      }
    }
    for (int64_t k = rank; k < G; k += team.size) {
      const T* r = rc_of(k);
      for (int t = tid; t < n + m; t += nt) wr[t] = r[t];  // wr, wc are contiguous
      __syncthreads();
      const T* C = cost + (first + k) * nm;
      const auto K = k_of(k);
      T* plan = q.plan ? static_cast<T*>(q.plan) + (first + k) * nm : nullptr;
      double sim = 0;
      for (int idx = tid; idx < n * m; idx += nt) {
        const int i = idx / m, j = idx - i * m;
        const T v = wr[i] * K(i, j) * wc[j];
        sim += double(v) * (1.0 - double(C[idx]));
        if (plan) plan[idx] = v;
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

// The official launch: `teams` teams of `size` blocks in flight (all co-resident), r, c of each
// block's `members` problems in shared memory (rc_smem) or in global scratch, their K in shared
// memory (k_smem) or recomputed.
struct OfficialLaunch {
  int threads, size;
  int64_t teams, members;
  size_t bytes;
  bool rc_smem, k_smem;
};

// Blocks of the official kernel resident at once on the current device.
template <typename T, bool RC_SMEM, bool K_SMEM>
int64_t official_capacity(int threads, size_t bytes) {
  allow_max_smem<sinkhorn_official_kernel<T, RC_SMEM, K_SMEM>>();
  int per_sm = 0, dev = 0, sms = 0;
  check_call(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sinkhorn_official_kernel<T, RC_SMEM, K_SMEM>,
                                                           threads, bytes),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  check_call(cudaGetDevice(&dev), "cudaGetDevice");
  check_call(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return int64_t(per_sm) * sms;
}

template <typename T>
OfficialLaunch official_launch(const SkParams& q, size_t limit) {
  OfficialLaunch o;
  o.threads = pick_threads(q.n, q.m);
  const Dims d = make_dims(q.n, q.m, q.m, o.threads);
  const int64_t G = q.group, groups = q.P / G;
  o.bytes = official_smem_bytes<T>(d, 1, false, false);
  if (o.bytes > limit)
    throw std::invalid_argument("sinkhorn (cuda, official): n + m too large: " + std::to_string(o.bytes) +
                                " bytes of shared memory needed, the device allows " + std::to_string(limit));
  // One block per problem when the whole group fits on the device at once, else fewer blocks per
  // group with several problems each; shrink until the chosen layout's occupancy holds the team.
  int64_t size = std::min<int64_t>(
      G, official_capacity<T, true, false>(o.threads, official_smem_bytes<T>(d, 1, true, false)));
  int64_t cap = 0;
  for (;;) {
    size = std::max<int64_t>(size, 1);
    o.members = (G + size - 1) / size;
    o.rc_smem = official_smem_bytes<T>(d, o.members, true, false) <= limit;
    o.bytes = official_smem_bytes<T>(d, o.members, o.rc_smem, false);
    cap = o.rc_smem ? official_capacity<T, true, false>(o.threads, o.bytes)
                    : official_capacity<T, false, false>(o.threads, o.bytes);
    if (size <= cap || size == 1) break;
    size = cap;
  }
  o.size = int(size);
  // K in shared memory too when it fits without shrinking the team.
  o.k_smem = false;
  const size_t k_bytes = official_smem_bytes<T>(d, o.members, true, true);
  if (o.rc_smem && k_bytes <= limit) {
    const int64_t k_cap = official_capacity<T, true, true>(o.threads, k_bytes);
    if (k_cap >= size) {
      o.k_smem = true;
      o.bytes = k_bytes;
      cap = k_cap;
    }
  }
  o.teams = std::max<int64_t>(1, std::min<int64_t>(groups, cap / size));
  return o;
}

template <typename T, bool RC_SMEM, bool K_SMEM>
void launch_official_kernel(const SkParams& q, const OfficialLaunch& o, const OfficialTeam& team, cudaStream_t st) {
  allow_max_smem<sinkhorn_official_kernel<T, RC_SMEM, K_SMEM>>();
  LaunchShape shape{o.teams * o.size, o.threads, o.bytes};
  if (o.size == 1) shape.grid = grid_for(q.P / q.group);  // no exchange: any number of blocks
  shape.cooperative = o.size > 1;
  launch_kernel("sinkhorn_official_kernel", sinkhorn_official_kernel<T, RC_SMEM, K_SMEM>, shape, st, q, team);
}

template <typename T>
void launch_official(const SkParams& q, cudaStream_t st) {
  const OfficialLaunch o = official_launch<T>(q, max_smem_optin());
  // Global scratch: arrivals (teams) | sums (teams, 2, size) | rc (P, n + m) unless in shared memory.
  const size_t arrivals_bytes = align16(size_t(o.teams) * sizeof(unsigned long long));
  const size_t sums_bytes = o.size > 1 ? align16(size_t(o.teams) * 2 * o.size * sizeof(double)) : 0;
  const size_t rc_bytes = o.rc_smem ? 0 : size_t(q.P) * (q.n + q.m) * sizeof(T);
  const size_t scratch_bytes = (o.size > 1 ? arrivals_bytes + sums_bytes : 0) + rc_bytes;
  char* scratch = nullptr;
  if (scratch_bytes) {
    check_call(cudaMallocAsync(reinterpret_cast<void**>(&scratch), scratch_bytes, st), "cudaMallocAsync");
    if (o.size > 1) check_call(cudaMemsetAsync(scratch, 0, arrivals_bytes, st), "cudaMemsetAsync");
  }
  OfficialTeam team;
  team.size = o.size;
  team.arrivals = o.size > 1 ? reinterpret_cast<unsigned long long*>(scratch) : nullptr;
  team.sums = o.size > 1 ? reinterpret_cast<double*>(scratch + arrivals_bytes) : nullptr;
  team.rc = rc_bytes ? scratch + (o.size > 1 ? arrivals_bytes + sums_bytes : 0) : nullptr;
  try {
    if (o.k_smem)
      launch_official_kernel<T, true, true>(q, o, team, st);
    else if (o.rc_smem)
      launch_official_kernel<T, true, false>(q, o, team, st);
    else
      launch_official_kernel<T, false, false>(q, o, team, st);
  } catch (...) {
    if (scratch) cudaFreeAsync(scratch, st);
    throw;
  }
  if (scratch) check_call(cudaFreeAsync(scratch, st), "cudaFreeAsync");
}

template <typename T>
void launch_any(const SinkhornArgs& args, cudaStream_t st) {
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
  launch<T>(q, st);
}

size_t element_size(DType dtype) {
  if (dtype == DType::F32) return sizeof(float);
  if (dtype == DType::F64) return sizeof(double);
  throw std::invalid_argument("sinkhorn (cuda): dtype must be float32 or float64");
}

}  // namespace

int64_t sinkhorn_smem_bytes(int64_t n, int64_t m, DType dtype, SinkhornMode mode, bool k_in_smem) {
  const bool f32 = element_size(dtype) == sizeof(float);
  if (mode == SinkhornMode::Official) {  // one problem per block, r and c (and K) in shared memory
    const Dims d = make_dims(int(n), int(m), int(m), pick_threads(n, m));
    return int64_t(f32 ? official_smem_bytes<float>(d, 1, true, k_in_smem)
                       : official_smem_bytes<double>(d, 1, true, k_in_smem));
  }
  const Dims d = k_in_smem ? make_dims(int(n), int(m), int(m | 1), pick_threads(n, m))
                           : make_dims(int(n), int(m), int(m), kPlanKThreads);
  return int64_t(f32 ? solver_smem_bytes<float>(d, k_in_smem) : solver_smem_bytes<double>(d, k_in_smem));
}

bool sinkhorn_needs_plan(int64_t n, int64_t m, DType dtype, SinkhornMode mode) {
  if (n <= 0 || m <= 0) return false;
  if (mode == SinkhornMode::Official) return false;  // r, c in shared memory or its own scratch
  const size_t limit = max_smem_optin();
  const SolverLaunch s = element_size(dtype) == 4 ? solver_launch<float>(int(n), int(m), limit)
                                                  : solver_launch<double>(int(n), int(m), limit);
  if (s.bytes > limit)
    throw std::invalid_argument("sinkhorn (cuda): n + m too large: the solver vectors need " +
                                std::to_string(s.bytes) + " bytes of shared memory, the device allows " +
                                std::to_string(limit));
  return !s.k_in_smem;
}

void sinkhorn(const SinkhornArgs& args, void* stream) {
  if (args.P <= 0) return;
  if (args.n <= 0 || args.m <= 0)
    throw std::invalid_argument("sinkhorn (cuda): n and m must be >= 1");
  if (args.n * (args.m + 1) >= (int64_t(1) << 31))
    throw std::invalid_argument("sinkhorn (cuda): n * m too large (>= 2^31 per problem)");
  if (args.mode == SinkhornMode::Official && (args.group <= 0 || args.P % args.group != 0))
    throw std::invalid_argument("sinkhorn: P must be a multiple of group in official mode");
  const auto st = static_cast<cudaStream_t>(stream);
  element_size(args.dtype);  // throws for other dtypes
  if (args.dtype == DType::F32) return launch_any<float>(args, st);
  launch_any<double>(args, st);
}

}  // namespace cuda
}  // namespace fastface
