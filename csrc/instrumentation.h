// The state contract's per-row events inside a CPU kernel: the emission and injection
// schedule of each batch row (times ascending, unused slots at time L, as
// Instrumentation.schedule gives them), applied to a float32 state block.
//
// A kernel keeps a RowCursor per batch row and walks its steps with `walk`: the plain steps up
// to the next event (cursor.segment_end) run in a loop of their own, then the kernel spills its
// state to memory and calls RowEvents::apply, which injects first (S = value, or
// S += scale * value) and then emits (states[b, slot] = S), the order of the contract.  No step
// in between pays for the check, and the step loop compiles as without instrumentation (with the
// check inside it, wkv7 and wkv4 ran 10-15 % slower with one emission in the whole call).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <optional>
#include <vector>

#include "simd.h"  // STATETAP_INLINE

namespace statetap {

struct RowCursor {
  int64_t emit_i = 0, inject_i = 0;
  int64_t emit_next = -1, inject_next = -1;  // -1: never

  bool at(int64_t t) const { return t == emit_next || t == inject_next; }

  /// The steps [t, end) to run before the next event check: up to and including the row's next
  /// emission or injection time, at most to `length`.
  int64_t segment_end(int64_t t, int64_t length) const {
    int64_t next = length - 1;
    if (emit_next >= t && emit_next < next) next = emit_next;
    if (inject_next >= t && inject_next < next) next = inject_next;
    return next + 1;
  }
};

/// Run steps(t0, t1) over the steps [0, length) of a row: with INSTR, in segments that end at
/// the row's event times, each followed by event(t) for its last step t (which calls
/// RowEvents::apply and advances the cursor).
template <bool INSTR, class Steps, class Event>
STATETAP_INLINE void walk(RowCursor& cursor, int64_t length, Steps&& steps, Event&& event) {
  if constexpr (!INSTR) {
    steps(int64_t{0}, length);
  } else {
    for (int64_t t = 0; t < length;) {
      const int64_t end = cursor.segment_end(t, length);
      steps(t, end);
      t = end;
      if (cursor.at(t - 1)) event(t - 1);
    }
  }
}

/// Check `out` is a contiguous float32 [B, *S] buffer and return its data.
inline float* checked_state_output(const at::Tensor& out, int64_t batch,
                                   const std::vector<int64_t>& state_shape) {
  std::vector<int64_t> want{batch};
  want.insert(want.end(), state_shape.begin(), state_shape.end());
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(want) && out.is_contiguous() &&
                        out.scalar_type() == at::kFloat,
                    "a state output must be a contiguous float32 tensor of shape ", want,
                    ", got ", out.sizes());
  return out.data_ptr<float>();
}

/// dst[0 .. n) = src[0 .. n), with streaming (non-temporal) stores where dst is 16-byte
/// aligned: the kernel never reads an emitted state again, so it need not evict the kernel's
/// working set from the caches nor be read for ownership first.
inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  }
  for (; i < n; ++i) dst[i] = src[i];
}

struct RowEvents {
  bool any = false;  // an emission or injection slot exists (the kernel's template flag)
  int64_t state_size = 0;  // elements of one row's state [*S]
  // emission: times/slots [B, P] int32, states [B, P, *S] float32
  const int32_t* emit_times = nullptr;
  const int32_t* emit_slots = nullptr;
  int64_t n_emit = 0;
  float* states = nullptr;
  // injection: times/slots [B, Q] int32, value [B, Q, *S] (strides value_b, value_q over the
  // leading dims, [*S] contiguous), scale [B, Q] (strides) or null
  const int32_t* inject_times = nullptr;
  const int32_t* inject_slots = nullptr;
  int64_t n_inject = 0;
  const float* value = nullptr;
  int64_t value_b = 0, value_q = 0;
  const float* scale = nullptr;
  int64_t scale_b = 0, scale_q = 0;
  bool set = false;
  // tensors the pointers above point into (kept alive for the call)
  at::Tensor keep_value, keep_scale;

  /// The validated schedule of a call (any argument may be absent).
  static RowEvents of(int64_t batch, const std::vector<int64_t>& state_shape,
                      const std::optional<at::Tensor>& emit_times,
                      const std::optional<at::Tensor>& emit_slots,
                      const std::optional<at::Tensor>& states,
                      const std::optional<at::Tensor>& inject_times,
                      const std::optional<at::Tensor>& inject_slots,
                      const std::optional<at::Tensor>& inject_value,
                      const std::optional<at::Tensor>& inject_scale, bool inject_set) {
    RowEvents e;
    e.state_size = 1;
    for (int64_t s : state_shape) e.state_size *= s;
    auto schedule = [&](const std::optional<at::Tensor>& times,
                        const std::optional<at::Tensor>& slots, const char* what) -> int64_t {
      TORCH_CHECK_VALUE(times.has_value() == slots.has_value(), what,
                        " times and slots come together");
      if (!times) return 0;
      TORCH_CHECK_VALUE(times->scalar_type() == at::kInt && slots->scalar_type() == at::kInt &&
                            times->is_contiguous() && slots->is_contiguous() &&
                            times->dim() == 2 && times->size(0) == batch &&
                            times->sizes() == slots->sizes(),
                        what, " times and slots must be contiguous int32 [B, P]");
      return times->size(1);
    };
    e.n_emit = schedule(emit_times, emit_slots, "emission");
    if (e.n_emit > 0) {
      TORCH_CHECK_VALUE(states.has_value(), "emission needs a states buffer");
      std::vector<int64_t> per_slot{e.n_emit};
      per_slot.insert(per_slot.end(), state_shape.begin(), state_shape.end());
      e.states = checked_state_output(*states, batch, per_slot);
      e.emit_times = emit_times->data_ptr<int32_t>();
      e.emit_slots = emit_slots->data_ptr<int32_t>();
    }
    e.n_inject = schedule(inject_times, inject_slots, "injection");
    if (e.n_inject > 0) {
      TORCH_CHECK_VALUE(inject_value.has_value(), "injection needs inject_value");
      std::vector<int64_t> want{batch, e.n_inject};
      want.insert(want.end(), state_shape.begin(), state_shape.end());
      at::Tensor value = inject_value->to(at::kFloat).expand(want);
      // [*S] must be contiguous per (b, q); the leading dims may broadcast (stride 0)
      if (!value.select(0, 0).select(0, 0).is_contiguous()) value = value.contiguous();
      e.keep_value = value;
      e.value = value.data_ptr<float>();
      e.value_b = value.stride(0);
      e.value_q = value.stride(1);
      if (inject_scale) {
        at::Tensor scale = inject_scale->to(at::kFloat).expand({batch, e.n_inject});
        e.keep_scale = scale;
        e.scale = scale.data_ptr<float>();
        e.scale_b = scale.stride(0);
        e.scale_q = scale.stride(1);
      }
      e.inject_times = inject_times->data_ptr<int32_t>();
      e.inject_slots = inject_slots->data_ptr<int32_t>();
      e.set = inject_set;
    }
    e.any = e.n_emit > 0 || e.n_inject > 0;
    return e;
  }

  /// The cursor of batch row b (with INSTR false: one that never fires).
  template <bool INSTR>
  RowCursor cursor(int64_t b) const {
    RowCursor c;
    if constexpr (INSTR) {
      c.emit_next = n_emit > 0 ? emit_times[b * n_emit] : -1;
      c.inject_next = n_inject > 0 ? inject_times[b * n_inject] : -1;
    }
    return c;
  }

  /// At step t of batch row b: inject into, then emit, the state block held in `spill`:
  /// `rows` rows of `len` elements at flat offset `offset` of [*S] (row i at offset + i *
  /// state_stride; 0: len), row i of the block at spill + i * spill_stride.
  void apply(RowCursor& c, int64_t t, int64_t b, int64_t offset, int64_t len, float* spill,
             int64_t rows = 1, int64_t spill_stride = 0, int64_t state_stride = 0) const {
    if (state_stride == 0) state_stride = len;
    if (t == c.inject_next) {
      const int64_t slot = inject_slots[b * n_inject + c.inject_i];
      const float* v = value + b * value_b + slot * value_q + offset;
      const float s = scale != nullptr ? scale[b * scale_b + slot * scale_q] : 1.0f;
      for (int64_t i = 0; i < rows; ++i) {
        float* dst = spill + i * spill_stride;
        const float* src = v + i * state_stride;
        if (set) {
          std::memcpy(dst, src, len * sizeof(float));
        } else {
          for (int64_t k = 0; k < len; ++k) dst[k] += s * src[k];
        }
      }
      ++c.inject_i;
      c.inject_next = c.inject_i < n_inject ? inject_times[b * n_inject + c.inject_i] : -1;
    }
    if (t == c.emit_next) {
      const int64_t slot = emit_slots[b * n_emit + c.emit_i];
      float* out = states + (b * n_emit + slot) * state_size + offset;
      for (int64_t i = 0; i < rows; ++i) {
        stream_copy(out + i * state_stride, spill + i * spill_stride, len);
      }
      _mm_sfence();  // the streamed stores are visible before the kernel returns
      ++c.emit_i;
      c.emit_next = c.emit_i < n_emit ? emit_times[b * n_emit + c.emit_i] : -1;
    }
  }
};

}  // namespace statetap
