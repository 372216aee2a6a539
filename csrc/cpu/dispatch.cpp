// Picks the kernels of one instruction set per process (isa.h) and forwards the public entry points
// of emd_kernels.h / convt_kernels.h to them. Compiled for the baseline only.
#include "dispatch.h"

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "convt_kernels.h"
#include "emd_kernels.h"
#include "isa.h"

namespace fastface {
namespace cpu {

// The kernel sets this build holds (CMake defines FASTFACE_ISA_<NAME> for each), best first.
#ifdef FASTFACE_ISA_NATIVE
FASTFACE_DECLARE_KERNELS(isa_native)
#endif
#ifdef FASTFACE_ISA_AVX512
FASTFACE_DECLARE_KERNELS(isa_avx512)
#endif
#ifdef FASTFACE_ISA_AVX2
FASTFACE_DECLARE_KERNELS(isa_avx2)
#endif
#ifdef FASTFACE_ISA_NEON
FASTFACE_DECLARE_KERNELS(isa_neon)
#endif
#ifdef FASTFACE_ISA_GENERIC
FASTFACE_DECLARE_KERNELS(isa_generic)
#endif

namespace {

std::vector<const KernelTable*> built_tables() {
  std::vector<const KernelTable*> tables;
#ifdef FASTFACE_ISA_NATIVE
  tables.push_back(&isa_native::kernel_table());
#endif
#ifdef FASTFACE_ISA_AVX512
  tables.push_back(&isa_avx512::kernel_table());
#endif
#ifdef FASTFACE_ISA_AVX2
  tables.push_back(&isa_avx2::kernel_table());
#endif
#ifdef FASTFACE_ISA_NEON
  tables.push_back(&isa_neon::kernel_table());
#endif
#ifdef FASTFACE_ISA_GENERIC
  tables.push_back(&isa_generic::kernel_table());
#endif
  return tables;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// The active table, or the reason FASTFACE_CPU_ISA cannot be honoured (chosen once per process:
// the packed weights of conv_transpose_pack depend on it).
struct Choice {
  const KernelTable* table = nullptr;
  std::string error;
};

const Choice& choice() {
  static const Choice c = [] {
    Choice out;
    const char* env = std::getenv("FASTFACE_CPU_ISA");
    try {
      const std::string name = choose_isa(env ? env : "", isas_supported());
      for (const KernelTable* t : built_tables())
        if (name == t->isa) out.table = t;
    } catch (const std::invalid_argument& e) {
      out.error = e.what();
    }
    return out;
  }();
  return c;
}

const KernelTable& active() {
  const Choice& c = choice();
  if (!c.table) throw std::invalid_argument(c.error);
  return *c.table;
}

}  // namespace

std::vector<std::string> isas_built() {
  std::vector<std::string> names;
  for (const KernelTable* t : built_tables()) names.push_back(t->isa);
  return names;
}

bool cpu_has(const std::string& feature) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (feature == "sse4.2") return __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt");
  if (feature == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (feature == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_has("avx2");
  if (feature == "avx512_bf16") return cpu_has("avx512") && __builtin_cpu_supports("avx512bf16");
#else
  (void)feature;
#endif
  return false;
}

std::vector<std::string> isas_supported() {
  std::vector<std::string> names;
  for (const std::string& name : isas_built()) {
    // "native" runs where it was built; "neon" (Advanced SIMD) is part of every aarch64 CPU.
    const bool ok = name == "generic" || name == "neon" || name == "native" ||
                    (name == "avx2" && cpu_has("avx2")) || (name == "avx512" && cpu_has("avx512"));
    if (ok) names.push_back(name);
  }
  return names;
}

std::string choose_isa(const std::string& requested, const std::vector<std::string>& supported) {
  const std::vector<std::string> built = isas_built();
  if (supported.empty()) throw std::invalid_argument("fastface: no CPU kernel set runs on this CPU");
  if (requested.empty() || requested == "auto") return supported.front();  // best first
  bool is_built = false, is_supported = false;
  for (const auto& n : built) is_built = is_built || n == requested;
  for (const auto& n : supported) is_supported = is_supported || n == requested;
  if (!is_built)
    throw std::invalid_argument("FASTFACE_CPU_ISA must be auto or one of the kernel sets this build holds (" +
                                join(built) + "), got '" + requested + "'");
  if (!is_supported)
    throw std::invalid_argument("FASTFACE_CPU_ISA='" + requested + "' asks for instructions this CPU lacks; it runs " +
                                join(supported) + " (unset FASTFACE_CPU_ISA or pick one of those)");
  return requested;
}

std::string active_isa() { return active().isa; }

void patch_cost(const PatchCostArgs& args, int n_threads) { active().patch_cost(args, n_threads); }
void sinkhorn(const SinkhornArgs& args, int n_threads) { active().sinkhorn(args, n_threads); }
void emd_pairs(const EmdPairsArgs& args, int n_threads) { active().emd_pairs(args, n_threads); }

int64_t conv_transpose_packed_size(int64_t cin, int64_t cout, int64_t kh, int64_t kw) {
  return active().convt_packed_size(cin, cout, kh, kw);
}
void conv_transpose_pack(const float* w, float* packed, int64_t cin, int64_t cout, int64_t kh, int64_t kw) {
  active().convt_pack(w, packed, cin, cout, kh, kw);
}
void conv_transpose_chain(const ConvTChainArgs& args, int n_threads) { active().convt_chain(args, n_threads); }
int conv_transpose_row_block() { return active().convt_row_block(); }
int conv_transpose_col_block() { return active().convt_col_block(); }

}  // namespace cpu
}  // namespace fastface
