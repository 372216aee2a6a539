// Which CPU kernel set runs (dispatch.cpp): the sets built, those this CPU runs, the active one.
#pragma once
#include <string>
#include <vector>

namespace fastface {
namespace cpu {

std::vector<std::string> isas_built();      // best first, e.g. {"avx512", "avx2", "generic"}
std::vector<std::string> isas_supported();  // the built sets this CPU can run, best first
bool cpu_has(const std::string& feature);   // "sse4.2", "avx2", "avx512", "avx512_bf16"
// The set to run for FASTFACE_CPU_ISA=requested ("" or "auto": the best supported); throws
// std::invalid_argument naming the variable when requested is not built or not supported.
std::string choose_isa(const std::string& requested, const std::vector<std::string>& supported);
// The set every kernel call runs (FASTFACE_CPU_ISA read once per process); throws as choose_isa.
std::string active_isa();

}  // namespace cpu
}  // namespace fastface
