// Exceptions inside OpenMP regions: one that leaves a region calls std::terminate (the
// interpreter aborts). Every region of the CPU kernels runs its throwing parts through
// ParallelErrors::run and the calling thread rethrows the first exception after the region,
// so Python sees MemoryError / ValueError / RuntimeError.
#pragma once
#include "isa.h"  // FASTFACE_ISA_NS
#include <atomic>
#include <exception>

namespace fastface {
namespace cpu {
namespace FASTFACE_ISA_NS {

class ParallelErrors {
 public:
  // Runs body(); an exception is recorded instead of leaving the calling thread's region.
  template <typename Body>
  void run(Body&& body) noexcept {
    try {
      body();
    } catch (...) {
      record(std::current_exception());
    }
  }
  // Whether any thread has failed: later iterations skip their work (all threads still reach
  // every barrier and worksharing loop of the region).
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }
  // After the region, on the calling thread.
  void rethrow_first() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  void record(std::exception_ptr error) noexcept {
#pragma omp critical(fastface_parallel_errors)
    {
      if (!first_) first_ = error;
    }
    failed_.store(true, std::memory_order_release);
  }
  std::exception_ptr first_;
  std::atomic<bool> failed_{false};
};

}  // namespace FASTFACE_ISA_NS
}  // namespace cpu
}  // namespace fastface
