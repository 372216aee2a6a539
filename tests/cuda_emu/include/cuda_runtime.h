// Host emulation of the CUDA subset that csrc/cuda uses, so that its kernels and launchers run
// (slowly, exactly) on machines without a GPU: tests/test_generator_cuda_emu.py (conv_transpose.cu)
// and tests/test_emd_cuda_emu.py (sinkhorn.cu, emd_pairs.cu, patch_cost.cu).
// Every thread of a block is a fiber (ucontext) on the calling thread, switched at barriers and
// spin-waits; __syncthreads, warp shuffles and cluster barriers are real barriers; the blocks of a
// cluster (of a cooperative grid) run together and see each other's shared memory (DSMEM);
// clusters run one after another. Dynamic shared memory starts as NaN bytes, so reading what was
// never written shows up in the results. Launch limits (dynamic shared memory opt-in, cluster
// sizes > 8 need the non-portable attribute, cooperative grids must fit the device at once) are
// checked as the driver does. Kernels take their dynamic shared memory through
// FASTFACE_DYNAMIC_SMEM (csrc/cuda/common.cuh) and launch through cudaLaunchKernelEx.
// Device properties come from FF_EMU_CC_MAJOR (9), FF_EMU_SMS (132), FF_EMU_SMEM_OPTIN (232448),
// FF_EMU_MAX_CLUSTER (16), FF_EMU_ACTIVE_CLUSTERS (3) and FF_EMU_BLOCKS_PER_SM (4).
#pragma once
#include <math.h>
#include <ucontext.h>

#include <atomic>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};

// ---- float16 / bfloat16 (round to nearest even) ----
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return float(v);
}
inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  std::memcpy(&h.bits, &v, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if (std::isnan(f)) {
    h.bits = 0x7fc0;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = uint16_t(u >> 16);
  }
  return h;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline double __longlong_as_double(long long i) {
  double d;
  std::memcpy(&d, &i, 8);
  return d;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }
// The device min / max of CUDA's math headers.
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

// The built-in variables, per emulated thread.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

// ---- execution context ----
namespace emu {

// Fibers: the emulated threads of the running blocks, resumed round-robin by run_fibers.
struct Fiber {
  ucontext_t uc;
  std::unique_ptr<char[]> stack;
  bool done = false;
};
struct Scheduler {
  ucontext_t main;
  Fiber* current = nullptr;
  bool progress = false;
  std::function<void()>* body = nullptr;
};
inline thread_local Scheduler* sched = nullptr;

// Back to the scheduler; resumed after every other fiber had its turn.
inline void yield() { swapcontext(&sched->current->uc, &sched->main); }

// A barrier of `expected` fibers.
struct Barrier {
  int expected, count = 0;
  unsigned gen = 0;
  explicit Barrier(std::ptrdiff_t n) : expected(int(n)) {}
  void arrive_and_wait() {
    const unsigned g = gen;
    sched->progress = true;
    if (++count == expected) {
      count = 0;
      ++gen;
      return;
    }
    while (gen == g) yield();
  }
};

struct Warp {
  std::unique_ptr<Barrier> bar;
  uint64_t slot[32];
};

struct Block {
  std::unique_ptr<Barrier> bar;
  std::atomic<int> flag{0};
  std::vector<char> smem;  // dynamic shared memory (16-byte aligned start: see smem_base)
  std::vector<Warp> warps;
  char* smem_base() { return smem.data() + (16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16; }
};

struct Cluster {
  std::unique_ptr<Barrier> bar;
  std::vector<Block*> blocks;
};

struct Ctx {
  uint3 tid, bid;
  dim3 bdim, gdim;
  Block* block = nullptr;
  Cluster* cluster = nullptr;
  int rank = 0;
};
inline thread_local Ctx ctx;

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

struct FuncAttrs {
  int max_dynamic_smem = 48 * 1024;
  bool non_portable = false;
};
inline std::mutex attrs_mu;
inline std::map<const void*, FuncAttrs> attrs;
inline std::atomic<int> smem_attr_sets{0};   // cudaFuncSetAttribute(MaxDynamicSharedMemorySize) calls
inline std::atomic<int> smem_attr_below{0};  // ... of them with a value below the device maximum
inline std::atomic<long long> last_launch_smem{-1};  // dynamic shared memory of the last launch
inline thread_local int last_error = 0;

}  // namespace emu


inline float4* fastface_emu_dynamic_smem() {
  return reinterpret_cast<float4*>(emu::ctx.block->smem_base());
}

inline void __syncthreads() { emu::ctx.block->bar->arrive_and_wait(); }

inline int __syncthreads_or(int v) {
  emu::Block* b = emu::ctx.block;
  if (v) b->flag.store(1);
  b->bar->arrive_and_wait();
  const int r = b->flag.load();
  b->bar->arrive_and_wait();
  if (emu::ctx.tid.x == 0) b->flag.store(0);
  b->bar->arrive_and_wait();
  return r;
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  emu::Warp& w = emu::ctx.block->warps[emu::ctx.tid.x / 32];
  const unsigned lane = emu::ctx.tid.x % 32;
  std::memcpy(&w.slot[lane], &v, sizeof(T));
  w.bar->arrive_and_wait();
  T r;
  std::memcpy(&r, &w.slot[lane ^ unsigned(lane_mask)], sizeof(T));
  w.bar->arrive_and_wait();
  return r;
}

// ---- atomics (sequentially consistent) and fences ----
template <typename T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { emu::yield(); }
template <typename T>
inline T __ldcg(const T* p) { return std::atomic_ref<T>(*const_cast<T*>(p)).load(); }

// ---- runtime API subset ----
using cudaError_t = int;
enum : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorClusterOutOfResources = 10,
  cudaErrorCooperativeLaunchTooLarge = 82,
};
typedef struct CUstream_st* cudaStream_t;

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorClusterOutOfResources: return "cluster out of resources (emulated)";
    case cudaErrorCooperativeLaunchTooLarge: return "cooperative launch too large (emulated)";
  }
  return "unknown error (emulated)";
}
inline cudaError_t cudaGetLastError() {
  const int e = emu::last_error;
  emu::last_error = 0;
  return e;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}

// Stream-ordered allocation: host memory, synchronous (launches are synchronous here too).
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes ? bytes : 1);
  if (*p) std::memset(*p, 0xff, bytes);  // NaN garbage, like shared memory
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}

enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrMultiProcessorCount,
};
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::env_int("FF_EMU_SMEM_OPTIN", 232448); break;
    case cudaDevAttrComputeCapabilityMajor: *v = emu::env_int("FF_EMU_CC_MAJOR", 9); break;
    case cudaDevAttrMultiProcessorCount: *v = emu::env_int("FF_EMU_SMS", 132); break;
  }
  return cudaSuccess;
}

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize,
  cudaFuncAttributeNonPortableClusterSizeAllowed,
};
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute a, int v) {
  std::lock_guard<std::mutex> lock(emu::attrs_mu);
  emu::FuncAttrs& f = emu::attrs[reinterpret_cast<const void*>(func)];
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    const int optin = emu::env_int("FF_EMU_SMEM_OPTIN", 232448);
    if (v > optin) return cudaErrorInvalidValue;
    ++emu::smem_attr_sets;
    if (v < optin) ++emu::smem_attr_below;
    f.max_dynamic_smem = v;
  } else {
    if (emu::env_int("FF_EMU_CC_MAJOR", 9) < 9) return cudaErrorInvalidValue;
    f.non_portable = v != 0;
  }
  return cudaSuccess;
}

enum cudaLaunchAttributeID { cudaLaunchAttributeCooperative = 2, cudaLaunchAttributeClusterDimension = 4 };
struct cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
  int cooperative;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};

namespace emu {

// Resident blocks per SM of any kernel (the emulator does not model registers or shared memory).
inline int blocks_per_sm() { return env_int("FF_EMU_BLOCKS_PER_SM", 4); }

inline bool is_cooperative(const cudaLaunchConfig_t* cfg) {
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeCooperative && cfg->attrs[i].val.cooperative) return true;
  return false;
}

// Check a launch configuration as the driver would; return its cluster size (or an error < 0).
inline int check_config(const void* func, const cudaLaunchConfig_t* cfg) {
  int cs = 1;
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) {
      if (cfg->attrs[i].val.clusterDim.y != 1 || cfg->attrs[i].val.clusterDim.z != 1) return -cudaErrorInvalidValue;
      cs = int(cfg->attrs[i].val.clusterDim.x);
    }
  if (is_cooperative(cfg) && cfg->gridDim.x > unsigned(env_int("FF_EMU_SMS", 132) * blocks_per_sm()))
    return -cudaErrorCooperativeLaunchTooLarge;
  FuncAttrs f;
  {
    std::lock_guard<std::mutex> lock(attrs_mu);
    const auto it = attrs.find(func);
    if (it != attrs.end()) f = it->second;
  }
  if (cs > 1 && env_int("FF_EMU_CC_MAJOR", 9) < 9) return -cudaErrorInvalidConfiguration;
  if (cs > 8 && !f.non_portable) return -cudaErrorInvalidConfiguration;
  if (cs > env_int("FF_EMU_MAX_CLUSTER", 16)) return -cudaErrorClusterOutOfResources;
  if (int(cfg->dynamicSmemBytes) > f.max_dynamic_smem) return -cudaErrorInvalidValue;
  if (cfg->blockDim.x == 0 || cfg->blockDim.x > 1024 || cfg->blockDim.x % 32 || cfg->blockDim.y != 1 ||
      cfg->blockDim.z != 1 || cfg->gridDim.x == 0 || cfg->gridDim.x % unsigned(cs))
    return -cudaErrorInvalidConfiguration;
  return cs;
}

constexpr size_t kFiberStack = 256 * 1024;

inline void fiber_entry() {
  Scheduler* s = sched;
  (*s->body)();
  s->current->done = true;
  s->progress = true;
}  // returns to uc_link: the scheduler

// Runs body on every fiber (ctxs[i] is fiber i's context) until all have returned.
inline void run_fibers(std::vector<Fiber>& fibers, const std::vector<Ctx>& ctxs, std::function<void()>& body) {
  Scheduler s;
  s.body = &body;
  Scheduler* outer = sched;
  sched = &s;
  for (auto& f : fibers) {
    f.done = false;
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack.get();
    f.uc.uc_stack.ss_size = kFiberStack;
    f.uc.uc_link = &s.main;
    makecontext(&f.uc, fiber_entry, 0);
  }
  for (int idle = 0;;) {
    bool left = false;
    s.progress = false;
    for (size_t i = 0; i < fibers.size(); ++i) {
      if (fibers[i].done) continue;
      left = true;
      s.current = &fibers[i];
      ctx = ctxs[i];
      ::threadIdx = ctx.tid;
      ::blockIdx = ctx.bid;
      ::blockDim = ctx.bdim;
      ::gridDim = ctx.gdim;
      swapcontext(&s.main, &fibers[i].uc);
    }
    if (!left) break;
    idle = s.progress ? 0 : idle + 1;
    if (idle > 1000000) std::abort();  // every fiber waits on something that never comes: a deadlock
  }
  sched = outer;
}

// Runs the grid cluster after cluster (a cooperative grid: every block at once).
template <typename Fn>
void run_grid(const cudaLaunchConfig_t* cfg, int cs, Fn&& body) {
  const unsigned nthreads = cfg->blockDim.x, grid = cfg->gridDim.x;
  const unsigned together = is_cooperative(cfg) ? grid : unsigned(cs);  // blocks running at once
  std::function<void()> fn(body);
  std::vector<Fiber> fibers(size_t(nthreads) * together);
  for (auto& f : fibers) f.stack.reset(new char[kFiberStack]);
  std::vector<Ctx> ctxs(fibers.size());
  for (unsigned c0 = 0; c0 < grid; c0 += together) {
    std::vector<std::unique_ptr<Block>> blocks;
    std::vector<std::unique_ptr<Cluster>> clusters;
    for (unsigned r = 0; r < together; ++r) {
      if (r % unsigned(cs) == 0) {
        clusters.push_back(std::make_unique<Cluster>());
        clusters.back()->bar = std::make_unique<Barrier>(std::ptrdiff_t(nthreads) * cs);
      }
      auto b = std::make_unique<Block>();
      b->bar = std::make_unique<Barrier>(std::ptrdiff_t(nthreads));
      b->smem.assign(cfg->dynamicSmemBytes + 16, char(0xff));  // NaN floats
      b->warps = std::vector<Warp>(nthreads / 32);
      for (auto& w : b->warps) w.bar = std::make_unique<Barrier>(32);
      clusters.back()->blocks.push_back(b.get());
      blocks.push_back(std::move(b));
    }
    for (unsigned r = 0; r < together; ++r)
      for (unsigned t = 0; t < nthreads; ++t) {
        Ctx& c = ctxs[size_t(r) * nthreads + t];
        c.tid = uint3{t, 0, 0};
        c.bid = uint3{c0 + r, 0, 0};
        c.bdim = cfg->blockDim;
        c.gdim = cfg->gridDim;
        c.block = blocks[r].get();
        c.cluster = clusters[r / unsigned(cs)].get();
        c.rank = int(r % unsigned(cs));
      }
    run_fibers(fibers, ctxs, fn);
  }
}

}  // namespace emu

template <typename T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T*, int, size_t) {
  *n = emu::blocks_per_sm();
  return cudaSuccess;
}

template <typename T>
inline cudaError_t cudaOccupancyMaxActiveClusters(int* n, T* func, const cudaLaunchConfig_t* cfg) {
  const int cs = emu::check_config(reinterpret_cast<const void*>(func), cfg);
  if (cs < 0) return -cs;
  *n = emu::env_int("FF_EMU_ACTIVE_CLUSTERS", 3);
  return cudaSuccess;
}

template <typename... ExpTypes, typename... ActTypes>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*kernel)(ExpTypes...),
                                      ActTypes&&... args) {
  const int cs = emu::check_config(reinterpret_cast<const void*>(kernel), cfg);
  if (cs < 0) {
    emu::last_error = -cs;
    return -cs;
  }
  emu::last_launch_smem = (long long)cfg->dynamicSmemBytes;
  return [&](ExpTypes... coerced) {
    emu::run_grid(cfg, cs, [&] { kernel(coerced...); });
    return cudaSuccess;
  }(std::forward<ActTypes>(args)...);
}

// ---- cooperative_groups::this_cluster() ----
namespace cooperative_groups {
struct cluster_group {
  static unsigned num_blocks() { return unsigned(emu::ctx.cluster->blocks.size()); }
  static unsigned block_rank() { return unsigned(emu::ctx.rank); }
  static void sync() { emu::ctx.cluster->bar->arrive_and_wait(); }
  template <typename T>
  static T* map_shared_rank(T* addr, int rank) {
    emu::Block* mine = emu::ctx.block;
    emu::Block* other = emu::ctx.cluster->blocks.at(size_t(rank));
    const std::ptrdiff_t off = reinterpret_cast<char*>(addr) - mine->smem_base();
    if (off < 0 || size_t(off) >= mine->smem.size()) std::abort();  // not a shared-memory address
    return reinterpret_cast<T*>(other->smem_base() + off);
  }
};
inline cluster_group this_cluster() { return cluster_group(); }
}  // namespace cooperative_groups
