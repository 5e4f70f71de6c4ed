// Vector math for the CPU kernels, written once for any width W (floats per vector).
//
// Vectors are GCC vector extensions (`float __attribute__((vector_size(4 * W)))`), so the same
// source compiles to AVX-512 (W = 16), AVX2 + FMA (W = 8) or plain scalar code (W = 1) depending
// on the target of the function it is inlined into (see isa.h).  Every helper here is
// always-inline: none is ever emitted as an out-of-line (shared, comdat) symbol that code built
// for another ISA could pick up.  `a * b + c` becomes one FMA where the target has it (the
// extension is built with -ffp-contract=fast).
#pragma once

#include <cstdint>
#include <cstring>

#define STATETAP_INLINE __attribute__((always_inline)) inline
// the same for a lambda: [&](...) STATETAP_INLINE_LAMBDA { ... }
#define STATETAP_INLINE_LAMBDA __attribute__((always_inline))

namespace statetap::simd {

template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

template <int W>
using F = typename Vec<W>::F;
template <int W>
using I = typename Vec<W>::I;

template <int W>
STATETAP_INLINE F<W> broadcast(float x) {
  return F<W>{} + x;
}

template <int W>
STATETAP_INLINE F<W> load(const float* p) {
  F<W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int W>
STATETAP_INLINE void store(float* p, F<W> v) {
  std::memcpy(p, &v, sizeof v);
}

template <int W>
STATETAP_INLINE F<W> select(I<W> mask, F<W> yes, F<W> no) {
  return (F<W>)((mask & (I<W>)yes) | (~mask & (I<W>)no));
}

template <int W>
STATETAP_INLINE F<W> max(F<W> a, F<W> b) {
  return select<W>(a > b, a, b);
}

template <int W>
STATETAP_INLINE F<W> min(F<W> a, F<W> b) {
  return select<W>(a < b, a, b);
}

template <int W>
STATETAP_INLINE F<W> abs(F<W> a) {
  return (F<W>)((I<W>)a & (I<W>{} + 0x7fffffff));
}

/// Sum of the W lanes (pairwise halving: log2 W adds).
template <int W>
STATETAP_INLINE float hsum(F<W> v) {
  if constexpr (W == 1) {
    return v[0];
  } else {
    typedef float H __attribute__((vector_size(2 * W)));
    H lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    typedef F<W / 2> Half;
    Half a, b;
    std::memcpy(&a, &lo, sizeof a);
    std::memcpy(&b, &hi, sizeof b);
    return hsum<W / 2>(a + b);
  }
}

/// 2^x for float32 x: split x = n + r (n integer, |r| <= 1/2), 2^r by its degree-7 Taylor
/// polynomial (relative error below 1e-8 before rounding), 2^n through the exponent bits.  Results below 2^-126 flush to 0
/// (as do inputs below -126); inputs above 127 give +inf; NaN propagates.
template <int W>
STATETAP_INLINE F<W> exp2(F<W> x) {
  const F<W> magic = broadcast<W>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  F<W> xc = min<W>(max<W>(x, broadcast<W>(-126.0f)), broadcast<W>(127.0f));
  F<W> shifted = xc + magic;
  F<W> n = shifted - magic;
  I<W> ni = (I<W>)shifted - (I<W>)magic;
  F<W> r = xc - n;
  F<W> p = broadcast<W>(1.5252733804059840e-5f);  // (ln 2)^k / k!, k = 7 .. 0
  p = p * r + 1.5403530393381606e-4f;
  p = p * r + 1.3333558146428443e-3f;
  p = p * r + 9.6181291076284772e-3f;
  p = p * r + 5.5504108664821580e-2f;
  p = p * r + 2.4022650695910071e-1f;
  p = p * r + 6.9314718055994531e-1f;
  p = p * r + 1.0f;
  F<W> out = (F<W>)((I<W>)p + (ni << 23));
  out = select<W>(x < -126.0f, F<W>{}, out);
  out = select<W>(x > 127.0f, broadcast<W>(__builtin_inff()), out);
  return select<W>(x != x, x, out);
}

/// e^x for float32 x (through exp2).
template <int W>
STATETAP_INLINE F<W> exp(F<W> x) {
  return exp2<W>(x * 1.4426950408889634f);
}

/// log(1 + y) for y in [0, 1]: 2 atanh(s) with s = y / (2 + y) in [0, 1/3], odd series to s^15
/// (relative error below 1e-7, and exact-relative for tiny y: no 1 + y is rounded).
template <int W>
STATETAP_INLINE F<W> log1p_unit(F<W> y) {
  F<W> s = y / (y + 2.0f);
  F<W> s2 = s * s;
  F<W> p = broadcast<W>(2.0f / 15.0f);
  p = p * s2 + 2.0f / 13.0f;
  p = p * s2 + 2.0f / 11.0f;
  p = p * s2 + 2.0f / 9.0f;
  p = p * s2 + 2.0f / 7.0f;
  p = p * s2 + 2.0f / 5.0f;
  p = p * s2 + 2.0f / 3.0f;
  p = p * s2 + 2.0f;
  return p * s;
}

/// softplus(x) = log(1 + e^x) as mamba-ssm computes it: x itself above 20, else
/// max(x, 0) + log1p(e^-|x|).
template <int W>
STATETAP_INLINE F<W> softplus(F<W> x) {
  F<W> soft = max<W>(x, F<W>{}) + log1p_unit<W>(exp<W>(-abs<W>(x)));
  return select<W>(x > 20.0f, x, soft);
}

/// silu(z) = z / (1 + e^-z).
template <int W>
STATETAP_INLINE F<W> silu(F<W> z) {
  return z / (exp<W>(-z) + 1.0f);
}

}  // namespace statetap::simd
