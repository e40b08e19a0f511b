// The data and length of a typed array of one element type, for the addon's functions (blas.cc, kernels.cc).
#pragma once
#include <node_api.h>

#include <cstddef>

// False when `value` is not a typed array of type `want`.
template <typename T>
inline bool TypedArrayData(napi_env env, napi_value value, napi_typedarray_type want, T** data, size_t* length) {
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void* raw;
  if (napi_get_typedarray_info(env, value, &type, length, &raw, &buffer, &offset) != napi_ok) return false;
  if (type != want) return false;
  *data = static_cast<T*>(raw);
  return true;
}
