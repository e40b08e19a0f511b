// sgemm for the tensor engine: C = op(A)·op(B) on Float32Arrays (views on any buffer, shared ones included),
// through the system's CBLAS (Debian's OpenBLAS). Built by build.sh; loaded by ../native-blas.ts when present.
#include <cblas.h>
#include <node_api.h>
#include <cstdint>

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, nullptr, "blas: N-API call failed: " #call);   \
      return nullptr;                                                      \
    }                                                                      \
  } while (0)

static bool floats(napi_env env, napi_value v, float** data, size_t* length) {
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void* raw;
  if (napi_get_typedarray_info(env, v, &type, length, &raw, &buffer, &offset) != napi_ok) return false;
  if (type != napi_float32_array) return false;
  *data = static_cast<float*>(raw);
  return true;
}

// sgemm(a, b, out, m, n, k, transposeA, transposeB, batch, strideA, strideB[, beta]): for each batch i,
// out[i] (m×n) = op(a[i·strideA]) (m×k) · op(b[i·strideB]) (k×n) + beta·out[i]; a stride of 0 broadcasts one
// matrix; beta defaults to 0 (out is only written), 1 adds the product to what out holds (a bias put there first).
static napi_value Sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 12;
  napi_value argv[12];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc != 11 && argc != 12) {
    napi_throw_type_error(env, nullptr, "blas.sgemm takes 11 or 12 arguments");
    return nullptr;
  }
  double beta = 0;
  if (argc == 12) CHECK(napi_get_value_double(env, argv[11], &beta));
  float *a, *b, *c;
  size_t la, lb, lc;
  if (!floats(env, argv[0], &a, &la) || !floats(env, argv[1], &b, &lb) || !floats(env, argv[2], &c, &lc)) {
    napi_throw_type_error(env, nullptr, "blas.sgemm: a, b and out must be Float32Arrays");
    return nullptr;
  }
  int64_t dims[3], batch, strideA, strideB;
  bool ta, tb;
  for (int i = 0; i < 3; i++) CHECK(napi_get_value_int64(env, argv[3 + i], &dims[i]));
  CHECK(napi_get_value_bool(env, argv[6], &ta));
  CHECK(napi_get_value_bool(env, argv[7], &tb));
  CHECK(napi_get_value_int64(env, argv[8], &batch));
  CHECK(napi_get_value_int64(env, argv[9], &strideA));
  CHECK(napi_get_value_int64(env, argv[10], &strideB));
  const int64_t m = dims[0], n = dims[1], k = dims[2];
  if (m < 0 || n < 0 || k < 0 || batch < 0 || strideA < 0 || strideB < 0 ||
      (batch > 0 && ((uint64_t)((batch - 1) * strideA + m * k) > la || (uint64_t)((batch - 1) * strideB + k * n) > lb ||
                     (uint64_t)(batch * m * n) > lc))) {
    napi_throw_range_error(env, nullptr, "blas.sgemm: sizes exceed the arrays");
    return nullptr;
  }
  for (int64_t i = 0; i < batch; i++) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f,
                a + i * strideA, ta ? m : k, b + i * strideB, tb ? k : n, static_cast<float>(beta), c + i * m * n, n);
  }
  return nullptr;
}

static napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n;
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  CHECK(napi_get_value_int32(env, argv[0], &n));
  openblas_set_num_threads(n);
  return nullptr;
}

static napi_value GetThreads(napi_env env, napi_callback_info info) {
  napi_value out;
  CHECK(napi_create_int32(env, openblas_get_num_threads(), &out));
  return out;
}

bool RegisterKernels(napi_env env, napi_value exports);  // kernels.cc

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sgemm", nullptr, Sgemm, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"getThreads", nullptr, GetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  CHECK(napi_define_properties(env, exports, 3, props));
  if (!RegisterKernels(env, exports)) {
    napi_throw_error(env, nullptr, "blas: registering the fused kernels failed");
    return nullptr;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
