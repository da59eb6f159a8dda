// Input checks shared by the ops: each failure names the op, the argument and the offending value,
// and raises the matching Python exception (ValueError, TypeError, IndexError).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace marn {

// Python's spelling (torch.float32), so that messages read the same from every backend.
inline std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kBool: return "torch.bool";
    default: return c10::toString(dtype);
  }
}

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        std::vector<int64_t> expected, const char* meaning) {
  check_defined(op, name, t);
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(expected), op, ": ", name, " must have shape ",
                    at::IntArrayRef(expected), " ", meaning, ", got ", t.sizes());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* meaning) {
  check_defined(op, name, t);
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must be a ", dim, "-D ", meaning,
                    " tensor, got shape ", t.sizes());
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ",
                    t.strides(), " for shape ", t.sizes());
}

inline void check_device(const char* op, const char* name, const at::Tensor& t,
                         const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device(),
                    " but the other inputs are on ", device);
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype_name(dtype),
                   ", got ", dtype_name(t.scalar_type()));
}

inline void check_float_or_double(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", dtype_name(t.scalar_type()));
}

// Float tensors that one kernel reads together: defined, contiguous, float32/float64, and on the
// device and of the dtype of the first.
inline void check_float_group(
    const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  check_defined(op, first_name, *first);
  check_float_or_double(op, first_name, *first);
  for (const auto& [name, t] : tensors) {
    check_defined(op, name, *t);
    check_device(op, name, *t, first->device());
    TORCH_CHECK_TYPE(t->scalar_type() == first->scalar_type(), op, ": ", name, " has dtype ",
                     dtype_name(t->scalar_type()), " but ", first_name, " has ",
                     dtype_name(first->scalar_type()));
    check_contiguous(op, name, *t);
  }
}

}  // namespace marn
