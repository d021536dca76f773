// Internal helpers of the shim: handle conversion and the catch-all that turns any C++ exception
// into a per-thread error message.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <string>
#include <vector>
#include "sudo_native.h"

namespace sudo {

void set_error(const char* msg);

inline at::Tensor& T(sudo_tensor h) {
  if (!h) throw std::invalid_argument("null tensor handle");
  return *static_cast<at::Tensor*>(h);
}
// Optional tensor argument: NULL means "not given".
inline at::Tensor opt(sudo_tensor h) { return h ? *static_cast<at::Tensor*>(h) : at::Tensor(); }
inline sudo_tensor wrap(at::Tensor t) { return new at::Tensor(std::move(t)); }
inline at::IntArrayRef ints(const int64_t* p, int32_t n) { return at::IntArrayRef(p, static_cast<size_t>(n)); }
inline at::ScalarType dt(int32_t d) { return static_cast<at::ScalarType>(d); }
inline at::Device dev(int32_t type, int32_t index) {
  return at::Device(static_cast<c10::DeviceType>(type), static_cast<c10::DeviceIndex>(index));
}
inline at::TensorOptions opts(int32_t dtype, int32_t dev_type, int32_t dev_index) {
  return at::TensorOptions().dtype(dt(dtype)).device(dev(dev_type, dev_index));
}
inline at::Scalar scalar(const sudo_scalar& s) {
  switch (s.kind) {
    case 1: return at::Scalar(s.i);
    case 2: return at::Scalar(s.i != 0);
    default: return at::Scalar(s.d);
  }
}
inline std::vector<at::Tensor> list(const sudo_tensor* ts, int32_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int32_t i = 0; i < n; ++i) v.push_back(T(ts[i]));
  return v;
}

}  // namespace sudo

#define SUDO_CATCH                                                                  \
  catch (const c10::Error& e) { sudo::set_error(e.what_without_backtrace()); }      \
  catch (const std::exception& e) { sudo::set_error(e.what()); }                    \
  catch (...) { sudo::set_error("unknown C++ exception"); }

// Body returning a tensor handle; NULL on error.
#define TRY_T(...) \
  try { __VA_ARGS__ } SUDO_CATCH return nullptr;
// Expression with a plain result (a property); `fail` on error.
#define TRY_V(expr, fail) \
  try { return (expr); } SUDO_CATCH return (fail);
// Body returning status 0; -1 on error.
#define TRY_S(...) \
  try { __VA_ARGS__ return 0; } SUDO_CATCH return -1;
