// Input dtypes of the CPU kernels: float32, float16 and bfloat16 tensors are read as float32
// rows (state and math are float32 whatever the input dtype); outputs are written back in the
// input dtype.  Float64 never reaches a kernel (the Python bindings run the float64 reference).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "simd.h"  // STATETAP_INLINE: these run inside each ISA's kernel, vectorised for it

namespace statetap {

/// Raise TypeError unless `t` is float32, float16 or bfloat16.
inline void check_input_dtype(const char* name, const at::Tensor& t) {
  auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
                   " must be float32, float16 or bfloat16 for the cpu kernel, got ", dtype);
}

/// `t` as a contiguous float32 tensor (a no-op for one already).
inline at::Tensor float32(const at::Tensor& t) {
  return t.to(at::kFloat).contiguous();
}

/// A float32 / float16 / bfloat16 tensor read by rows as float32 (contiguous rows, or strided
/// ones with `strided_row`).
struct FloatRows {
  const void* data = nullptr;
  at::ScalarType dtype = at::kFloat;

  FloatRows() = default;
  explicit FloatRows(const at::Tensor& t) : data(t.data_ptr()), dtype(t.scalar_type()) {}

  /// Ask the caches for elements [offset, offset + n) ahead of their use: a recurrence reads
  /// one token's row at a time, a whole token stride apart (often past the hardware
  /// prefetchers' reach).
  void prefetch(int64_t offset, int64_t n) const {
    const int64_t size = dtype == at::kFloat ? 4 : 2;
    const char* first = static_cast<const char*>(data) + offset * size;
    for (int64_t byte = 0; byte < n * size; byte += 64) __builtin_prefetch(first + byte);
  }

  /// Elements offset + i * stride, i < n, as float32: `row` when the stride is 1, else gathered
  /// into `buffer` (n floats).
  STATETAP_INLINE const float* strided_row(int64_t offset, int64_t stride, int64_t n,
                                           float* buffer) const {
    if (stride == 1) return row(offset, n, buffer);
    switch (dtype) {
      case at::kHalf:
        gather(static_cast<const c10::Half*>(data) + offset, stride, n, buffer);
        break;
      case at::kBFloat16:
        gather(static_cast<const c10::BFloat16*>(data) + offset, stride, n, buffer);
        break;
      default:
        gather(static_cast<const float*>(data) + offset, stride, n, buffer);
    }
    return buffer;
  }

  /// Elements [offset, offset + n) as float32: a pointer into the tensor when it is float32,
  /// else converted into `buffer` (n floats).
  STATETAP_INLINE const float* row(int64_t offset, int64_t n, float* buffer) const {
    switch (dtype) {
      case at::kHalf:
        convert(static_cast<const c10::Half*>(data) + offset, n, buffer);
        return buffer;
      case at::kBFloat16:
        convert(static_cast<const c10::BFloat16*>(data) + offset, n, buffer);
        return buffer;
      default:
        return static_cast<const float*>(data) + offset;
    }
  }

 private:
  template <class T>
  STATETAP_INLINE static void convert(const T* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }

  template <class T>
  STATETAP_INLINE static void gather(const T* src, int64_t stride, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i * stride]);
  }
};

/// A contiguous float32 / float16 / bfloat16 output written by rows from float32.
struct OutputRows {
  void* data = nullptr;
  at::ScalarType dtype = at::kFloat;

  OutputRows() = default;
  explicit OutputRows(const at::Tensor& t) : data(t.data_ptr()), dtype(t.scalar_type()) {}

  /// Write `n` floats to elements [offset, offset + n), rounding to the output dtype.
  STATETAP_INLINE void write(int64_t offset, int64_t n, const float* src) const {
    switch (dtype) {
      case at::kHalf:
        convert(src, n, static_cast<c10::Half*>(data) + offset);
        break;
      case at::kBFloat16:
        convert(src, n, static_cast<c10::BFloat16*>(data) + offset);
        break;
      default:
        convert(src, n, static_cast<float*>(data) + offset);
    }
  }

 private:
  template <class T>
  STATETAP_INLINE static void convert(const float* src, int64_t n, T* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  }
};

}  // namespace statetap
