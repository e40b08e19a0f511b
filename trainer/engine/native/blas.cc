// sgemm for the tensor engine: C = op(A)·op(B) on Float32Arrays (views on any buffer, shared ones included),
// through the system's CBLAS (Debian's OpenBLAS). Built by build.sh; loaded by ../native-blas.ts when present.
#include <cblas.h>
#include <omp.h>
#include <node_api.h>
#include <cstdint>

#include "typed-arrays.h"

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, nullptr, "blas: N-API call failed: " #call);   \
      return nullptr;                                                      \
    }                                                                      \
  } while (0)

static bool floats(napi_env env, napi_value v, float** data, size_t* length) {
  return TypedArrayData(env, v, napi_float32_array, data, length);
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

// sgemmHeads(a, b, c, outer, inner, m, n, k, transposeA, transposeB, alpha, lda, ldb, ldc, aOuter, aInner, bOuter,
// bInner, cOuter, cInner): for o < outer, i < inner: C(o,i) = alpha·op(A(o,i))·op(B(o,i)), where X(o,i) starts at
// element o·xOuter + i·xInner of x and its rows are ldx apart. Attention per (batch, head) straight on [B, S, H]
// tensors (a head is a column block: leading dimension H), without splitting heads into [B, n, S, d] copies.
static napi_value SgemmHeads(napi_env env, napi_callback_info info) {
  size_t argc = 20;
  napi_value argv[20];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc != 20) {
    napi_throw_type_error(env, nullptr, "blas.sgemmHeads takes 20 arguments");
    return nullptr;
  }
  float *a, *b, *c;
  size_t la, lb, lc;
  if (!floats(env, argv[0], &a, &la) || !floats(env, argv[1], &b, &lb) || !floats(env, argv[2], &c, &lc)) {
    napi_throw_type_error(env, nullptr, "blas.sgemmHeads: a, b and c must be Float32Arrays");
    return nullptr;
  }
  int64_t v[14];
  bool ta, tb;
  double alpha;
  for (int i = 0; i < 5; i++) CHECK(napi_get_value_int64(env, argv[3 + i], &v[i]));  // outer inner m n k
  CHECK(napi_get_value_bool(env, argv[8], &ta));
  CHECK(napi_get_value_bool(env, argv[9], &tb));
  CHECK(napi_get_value_double(env, argv[10], &alpha));
  for (int i = 0; i < 9; i++) CHECK(napi_get_value_int64(env, argv[11 + i], &v[5 + i]));  // lda … cInner
  const int64_t outer = v[0], inner = v[1], m = v[2], n = v[3], k = v[4];
  const int64_t lda = v[5], ldb = v[6], ldc = v[7], aO = v[8], aI = v[9], bO = v[10], bI = v[11], cO = v[12], cI = v[13];
  for (int i = 0; i < 14; i++) {
    if (v[i] < 0) {
      napi_throw_range_error(env, nullptr, "blas.sgemmHeads: sizes and strides must not be negative");
      return nullptr;
    }
  }
  if (outer == 0 || inner == 0 || m == 0 || n == 0) return nullptr;
  // the last element each operand reaches
  const uint64_t aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
  const uint64_t aEnd = (outer - 1) * aO + (inner - 1) * aI + (aRows - 1) * lda + aCols;
  const uint64_t bEnd = (outer - 1) * bO + (inner - 1) * bI + (bRows - 1) * ldb + bCols;
  const uint64_t cEnd = (outer - 1) * cO + (inner - 1) * cI + (m - 1) * ldc + n;
  if ((k > 0 && (aEnd > la || bEnd > lb)) || cEnd > lc || lda < (int64_t)aCols || ldb < (int64_t)bCols || ldc < n) {
    napi_throw_range_error(env, nullptr, "blas.sgemmHeads: the strides reach beyond the arrays");
    return nullptr;
  }
  // The (batch, head) products are small (attention: 32–64 rows): OpenBLAS threading inside each one costs more
  // than it gains, so they run single-threaded, spread over the OpenMP threads. OpenBLAS's thread count is global;
  // it is set back before returning, and nothing else calls it meanwhile (the engine calls from one thread).
  const int64_t count = outer * inner;
  const int threads = omp_get_max_threads();
  const int blasThreads = openblas_get_num_threads();
  const bool spread = count >= 2 && threads > 1;
  if (spread) openblas_set_num_threads(1);
#pragma omp parallel for schedule(static) if (spread)
  for (int64_t t = 0; t < count; t++) {
    const int64_t o = t / inner, i = t % inner;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                static_cast<float>(alpha), a + o * aO + i * aI, lda, b + o * bO + i * bI, ldb, 0.0f,
                c + o * cO + i * cI, ldc);
  }
  if (spread) openblas_set_num_threads(blasThreads);
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
      {"sgemmHeads", nullptr, SgemmHeads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"getThreads", nullptr, GetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  if (!RegisterKernels(env, exports)) {
    napi_throw_error(env, nullptr, "blas: registering the fused kernels failed");
    return nullptr;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
