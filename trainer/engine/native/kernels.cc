// Fused element-wise kernels for the tensor engine: GELU, LayerNorm, softmax backward and label-smoothed
// cross-entropy, forward and backward, on Float32Arrays (views of the wasm heap), vectorised by the compiler for
// the machine that builds them and split over OpenMP threads. Each replaces a chain of 4–12 single-threaded wasm
// kernels and the intermediate tensors between them. Registered on the addon's exports by RegisterKernels().
#include <node_api.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "typed-arrays.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

namespace {

#define CHECK_OR(call, ret)                                                  \
  do {                                                                       \
    if ((call) != napi_ok) {                                                 \
      napi_throw_error(env, nullptr, "kernels: N-API call failed: " #call); \
      return ret;                                                            \
    }                                                                        \
  } while (0)

// Below this many elements a kernel runs on the calling thread: waking threads costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

// erf(x) for float, vectorisable: a rational approximation on [-4, 4] (erf(±4) rounds to ±1 in float), the one
// Eigen and XLA use; |error| < 2e-7 on the whole line (checked against std::erf by the addon's test).
inline float erfApprox(float x) {
  x = std::min(4.0f, std::max(-4.0f, x));
  const float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = x2 * p + -2.10102402082508e-06f;
  p = x2 * p + -5.69250639462346e-05f;
  p = x2 * p + -7.34990630326855e-04f;
  p = x2 * p + -2.95459980854025e-03f;
  p = x2 * p + -1.60960333262415e-02f;
  p = x * p;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = x2 * q + -1.68282697438203e-03f;
  q = x2 * q + -7.37332916720468e-03f;
  q = x2 * q + -1.42647390514189e-02f;
  return p / q;
}

// exp(x) for float, vectorisable (Cephes expf: range reduction by ln 2, degree-6 polynomial); relative error
// < 2 ulp; 0 below -87 (where expf's result is denormal or 0).
inline float expApprox(float in) {
  float x = std::min(88.3762626647949f, std::max(-87.3f, in));
  // fx = x·log2(e) rounded to the nearest integer by the 1.5·2^23 trick (floorf is vectorised only under
  // -ffast-math, which this file does not use, so the addition and subtraction are kept as written).
  const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t n = static_cast<int32_t>(fx);
  x = x - fx * 0.693359375f;
  x = x + fx * 2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  // Below -87 the result would be (or round to) a denormal; 0 instead, as expf underflows: denormals flowing
  // into the matmuls downstream (masked attention probabilities) slow them tenfold.
  const float r = in < -87.0f ? 0.0f : y * __builtin_bit_cast(float, (n + 127) << 23);
  return in == in ? r : in;  // NaN stays NaN (the clamps above would turn it into a number)
}

struct Floats {
  float* data = nullptr;
  size_t length = 0;
};

bool GetFloats(napi_env env, napi_value v, Floats* out) {
  return TypedArrayData(env, v, napi_float32_array, &out->data, &out->length);
}

bool GetInts(napi_env env, napi_value v, const int32_t** data, size_t* length) {
  return TypedArrayData(env, v, napi_int32_array, data, length);
}

// Reads argv as: `nf` Float32Arrays (each at least the size given by `need`), then integers, then doubles.
struct Args {
  napi_env env;
  std::vector<napi_value> argv;
  bool ok = true;

  Args(napi_env e, napi_callback_info info, size_t count, const char* name) : env(e), argv(count) {
    size_t argc = count;
    if (napi_get_cb_info(env, info, &argc, argv.data(), nullptr, nullptr) != napi_ok || argc != count) {
      std::string msg = std::string("kernels.") + name + " takes " + std::to_string(count) + " arguments";
      napi_throw_type_error(env, nullptr, msg.c_str());
      ok = false;
    }
  }
  float* floats(size_t i, size_t need, const char* what) {
    Floats f;
    if (!ok) return nullptr;
    if (!GetFloats(env, argv[i], &f) || f.length < need) {
      std::string msg = std::string("kernels: ") + what + " must be a Float32Array of at least " + std::to_string(need) + " elements";
      napi_throw_range_error(env, nullptr, msg.c_str());
      ok = false;
      return nullptr;
    }
    return f.data;
  }
  int64_t integer(size_t i) {
    int64_t v = 0;
    if (ok && napi_get_value_int64(env, argv[i], &v) != napi_ok) {
      napi_throw_type_error(env, nullptr, "kernels: expected an integer");
      ok = false;
    }
    if (ok && v < 0) {
      napi_throw_range_error(env, nullptr, "kernels: sizes must not be negative");
      ok = false;
    }
    return v;
  }
  double number(size_t i) {
    double v = 0;
    if (ok && napi_get_value_double(env, argv[i], &v) != napi_ok) {
      napi_throw_type_error(env, nullptr, "kernels: expected a number");
      ok = false;
    }
    return v;
  }
};

// geluForward(x, y, n): y = 0.5·x·(1 + erf(x/√2))
napi_value GeluForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 3, "geluForward");
  const int64_t n = a.integer(2);
  const float* x = a.floats(0, n, "x");
  float* y = a.floats(1, n, "y");
  if (!a.ok) return nullptr;
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erfApprox(x[i] * 0.70710678118654752f));
  return nullptr;
}

// geluBackward(x, dy, dx, n): dx = dy·(Φ(x) + x·φ(x)), Φ(x) = 0.5·(1 + erf(x/√2)), φ(x) = exp(-x²/2)/√(2π)
napi_value GeluBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 4, "geluBackward");
  const int64_t n = a.integer(3);
  const float* x = a.floats(0, n, "x");
  const float* dy = a.floats(1, n, "dy");
  float* dx = a.floats(2, n, "dx");
  if (!a.ok) return nullptr;
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + erfApprox(v * 0.70710678118654752f));
    const float pdf = expApprox(-0.5f * v * v) * 0.39894228040143268f;
    dx[i] = dy[i] * (cdf + v * pdf);
  }
  return nullptr;
}

// layerNormForward(x, gamma, beta, y, xhat, rstd, rows, cols, eps): per row, mean and biased variance (two passes,
// double accumulators), xhat = (x - mean)·rstd, rstd = 1/√(var + eps), y = xhat·gamma + beta.
napi_value LayerNormForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 9, "layerNormForward");
  const int64_t rows = a.integer(6), cols = a.integer(7);
  const double eps = a.number(8);
  const size_t n = rows * cols;
  const float* x = a.floats(0, n, "x");
  const float* gamma = a.floats(1, cols, "gamma");
  const float* beta = a.floats(2, cols, "beta");
  float* y = a.floats(3, n, "y");
  float* xhat = a.floats(4, n, "xhat");
  float* rstd = a.floats(5, rows, "rstd");
  if (!a.ok) return nullptr;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(n) >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    double sum = 0;
    for (int64_t c = 0; c < cols; c++) sum += xr[c];
    const float mean = static_cast<float>(sum / cols);
    double sq = 0;
    for (int64_t c = 0; c < cols; c++) {
      const float d = xr[c] - mean;
      sq += static_cast<double>(d) * d;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(static_cast<float>(sq / cols)) + eps));
    rstd[r] = inv;
    float* hr = xhat + r * cols;
    float* yr = y + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) {
      const float h = (xr[c] - mean) * inv;
      hr[c] = h;
      yr[c] = h * gamma[c] + beta[c];
    }
  }
  return nullptr;
}

// layerNormBackward(dy, xhat, rstd, gamma, dx, dgamma, dbeta, rows, cols):
// g = dy·gamma; dx = (g - mean(g) - xhat·mean(g·xhat))·rstd; dgamma = Σ_rows dy·xhat; dbeta = Σ_rows dy.
napi_value LayerNormBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 9, "layerNormBackward");
  const int64_t rows = a.integer(7), cols = a.integer(8);
  const size_t n = rows * cols;
  const float* dy = a.floats(0, n, "dy");
  const float* xhat = a.floats(1, n, "xhat");
  const float* rstd = a.floats(2, rows, "rstd");
  const float* gamma = a.floats(3, cols, "gamma");
  float* dx = a.floats(4, n, "dx");
  float* dgamma = a.floats(5, cols, "dgamma");
  float* dbeta = a.floats(6, cols, "dbeta");
  if (!a.ok) return nullptr;
  const bool parallel = static_cast<int64_t>(n) >= kParallelMin;
  const int threads = parallel ? omp_get_max_threads() : 1;
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * cols, 0.0);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    const int t = omp_get_thread_num();
    double* pg = partial.data() + static_cast<size_t>(t) * 2 * cols;
    double* pb = pg + cols;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const float* dyr = dy + r * cols;
      const float* hr = xhat + r * cols;
      double m1 = 0, m2 = 0;
      for (int64_t c = 0; c < cols; c++) {
        const float g = dyr[c] * gamma[c];
        m1 += g;
        m2 += static_cast<double>(g) * hr[c];
        pg[c] += static_cast<double>(dyr[c]) * hr[c];
        pb[c] += dyr[c];
      }
      const float mean1 = static_cast<float>(m1 / cols), mean2 = static_cast<float>(m2 / cols);
      const float inv = rstd[r];
      float* dxr = dx + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; c++) dxr[c] = (dyr[c] * gamma[c] - mean1 - hr[c] * mean2) * inv;
    }
  }
  for (int64_t c = 0; c < cols; c++) {
    double g = 0, b = 0;
    for (int t = 0; t < threads; t++) {
      g += partial[static_cast<size_t>(t) * 2 * cols + c];
      b += partial[static_cast<size_t>(t) * 2 * cols + cols + c];
    }
    dgamma[c] = static_cast<float>(g);
    dbeta[c] = static_cast<float>(b);
  }
  return nullptr;
}

// softmaxForward(x, y, rows, cols): y = exp(x - max)/Σ exp(x - max) over each row.
napi_value SoftmaxForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 4, "softmaxForward");
  const int64_t rows = a.integer(2), cols = a.integer(3);
  const size_t n = rows * cols;
  const float* x = a.floats(0, n, "x");
  float* y = a.floats(1, n, "y");
  if (!a.ok) return nullptr;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(n) >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float mx = xr[0];
    for (int64_t c = 1; c < cols; c++) mx = std::max(mx, xr[c]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; c++) {
      const float e = expApprox(xr[c] - mx);
      yr[c] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) yr[c] *= inv;
  }
  return nullptr;
}

// softmaxBackward(y, dy, dx, rows, cols): dx = y·(dy - Σ_c dy·y), the gradient of a softmax over the last axis.
napi_value SoftmaxBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 5, "softmaxBackward");
  const int64_t rows = a.integer(3), cols = a.integer(4);
  const size_t n = rows * cols;
  const float* y = a.floats(0, n, "y");
  const float* dy = a.floats(1, n, "dy");
  float* dx = a.floats(2, n, "dx");
  if (!a.ok) return nullptr;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(n) >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < cols; c++) dot += dyr[c] * yr[c];
    float* dxr = dx + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) dxr[c] = yr[c] * (dyr[c] - dot);
  }
  return nullptr;
}

// The targets (Int32Array, one class in [0, cols) per row) and weights (an empty Float32Array, or one per row) of
// the cross-entropy kernels; false after throwing.
bool TargetsAndWeights(napi_env env, napi_value t, napi_value wv, int64_t rows, int64_t cols, const int32_t** targets, Floats* w) {
  size_t nt;
  if (!GetInts(env, t, targets, &nt) || nt < static_cast<size_t>(rows)) {
    napi_throw_range_error(env, nullptr, "kernels: targets must be an Int32Array of one class per row");
    return false;
  }
  if (!GetFloats(env, wv, w) || (w->length != 0 && w->length < static_cast<size_t>(rows))) {
    napi_throw_range_error(env, nullptr, "kernels: weights must be an empty Float32Array or one weight per row");
    return false;
  }
  for (int64_t r = 0; r < rows; r++) {
    if ((*targets)[r] < 0 || (*targets)[r] >= cols) {
      napi_throw_range_error(env, nullptr, "kernels: a target class is out of range");
      return false;
    }
  }
  return true;
}

// crossEntropyForward(logits, targets, weights, loss, rows, cols, smoothing):
// per row, with lse = log Σ exp(logits): loss = weight·((1-ε)·(lse - logits[target]) + ε·(lse - mean(logits))).
// `weights` may be an empty Float32Array (all rows count 1).
napi_value CrossEntropyForward(napi_env env, napi_callback_info info) {
  Args a(env, info, 7, "crossEntropyForward");
  const int64_t rows = a.integer(4), cols = a.integer(5);
  const double eps = a.number(6);
  const float* logits = a.floats(0, rows * cols, "logits");
  float* loss = a.floats(3, rows, "loss");
  const int32_t* targets;
  Floats w;
  if (!a.ok || !TargetsAndWeights(env, a.argv[1], a.argv[2], rows, cols, &targets, &w)) return nullptr;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* lr = logits + r * cols;
    float mx = lr[0];
    for (int64_t c = 1; c < cols; c++) mx = std::max(mx, lr[c]);
    float s = 0, total = 0;
#pragma omp simd reduction(+ : s, total)
    for (int64_t c = 0; c < cols; c++) {
      s += expApprox(lr[c] - mx);
      total += lr[c];
    }
    const double l = mx + std::log(static_cast<double>(s));
    const double nll = l - lr[targets[r]];
    const double smooth = l - static_cast<double>(total) / cols;
    const double weight = w.length ? w.data[r] : 1.0;
    loss[r] = static_cast<float>(weight * ((1.0 - eps) * nll + eps * smooth));
  }
  return nullptr;
}

// crossEntropyBackward(logits, targets, weights, dloss, dlogits, rows, cols, smoothing):
// dlogits = dloss·weight·(softmax(logits) - (1-ε)·onehot(target) - ε/C).
napi_value CrossEntropyBackward(napi_env env, napi_callback_info info) {
  Args a(env, info, 8, "crossEntropyBackward");
  const int64_t rows = a.integer(5), cols = a.integer(6);
  const double eps = a.number(7);
  const float* logits = a.floats(0, rows * cols, "logits");
  const float* dloss = a.floats(3, rows, "dloss");
  float* dlogits = a.floats(4, rows * cols, "dlogits");
  const int32_t* targets;
  Floats w;
  if (!a.ok || !TargetsAndWeights(env, a.argv[1], a.argv[2], rows, cols, &targets, &w)) return nullptr;
  const float off = static_cast<float>(eps / cols);
  const float on = static_cast<float>(1.0 - eps);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* lr = logits + r * cols;
    float* dr = dlogits + r * cols;
    const float scale = dloss[r] * (w.length ? w.data[r] : 1.0f);
    // softmax as exp(x - max)/Σ rather than exp(x - lse): lse rounded to float is off by up to half an ulp of
    // itself (5e-7 at 10), which would be every probability's relative error.
    float mx = lr[0];
    for (int64_t c = 1; c < cols; c++) mx = std::max(mx, lr[c]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < cols; c++) sum += expApprox(lr[c] - mx);
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) dr[c] = scale * (expApprox(lr[c] - mx) * inv - off);
    dr[targets[r]] -= scale * on;
  }
  return nullptr;
}

// addRows(a, b, out, rows, cols): out[r·cols + c] = a[r·cols + c] + b[c] — a same-shape sum (rows = 1) or b
// broadcast over a's leading axes (a bias, the query tokens). One float addition per element, as the stock kernel.
napi_value AddRows(napi_env env, napi_callback_info info) {
  Args a(env, info, 5, "addRows");
  const int64_t rows = a.integer(3), cols = a.integer(4);
  const size_t n = rows * cols;
  const float* x = a.floats(0, n, "a");
  const float* b = a.floats(1, cols, "b");
  float* out = a.floats(2, n, "out");
  if (!a.ok) return nullptr;
  if (rows == 1) {
#pragma omp parallel for simd schedule(static) if (static_cast<int64_t>(n) >= kParallelMin)
    for (int64_t i = 0; i < cols; i++) out[i] = x[i] + b[i];
    return nullptr;
  }
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(n) >= kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float* orow = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) orow[c] = xr[c] + b[c];
  }
  return nullptr;
}

// gatherRows(x, indices, out, rows, cols): out[i] = x[indices[i]] for rows of `cols` floats; an index outside
// [0, rows) is an error (thrown before anything is written).
napi_value GatherRows(napi_env env, napi_callback_info info) {
  Args a(env, info, 5, "gatherRows");
  const int64_t rows = a.integer(3), cols = a.integer(4);
  const float* x = a.floats(0, rows * cols, "x");
  if (!a.ok) return nullptr;
  const int32_t* idx;
  size_t count;
  if (!GetInts(env, a.argv[1], &idx, &count)) {
    napi_throw_type_error(env, nullptr, "kernels: indices must be an Int32Array");
    return nullptr;
  }
  float* out = a.floats(2, count * cols, "out");
  if (!a.ok) return nullptr;
  for (size_t i = 0; i < count; i++) {
    if (idx[i] < 0 || idx[i] >= rows) {
      napi_throw_range_error(env, nullptr, "kernels: a gather index is out of range");
      return nullptr;
    }
  }
  const int64_t n = static_cast<int64_t>(count);
#pragma omp parallel for schedule(static) if (n * cols >= kParallelMin)
  for (int64_t i = 0; i < n; i++) std::copy(x + idx[i] * cols, x + (idx[i] + 1) * cols, out + i * cols);
  return nullptr;
}

// scatterAddRows(x, ids, out, numSegments, cols): out = 0, then out[ids[i]] += x[i] for ids in [0, numSegments)
// (others skipped), in order of i: the sum of the gather gradient, as tfjs's UnsortedSegmentSum.
napi_value ScatterAddRows(napi_env env, napi_callback_info info) {
  Args a(env, info, 5, "scatterAddRows");
  const int64_t segments = a.integer(3), cols = a.integer(4);
  float* out = a.floats(2, segments * cols, "out");
  if (!a.ok) return nullptr;
  const int32_t* ids;
  size_t count;
  if (!GetInts(env, a.argv[1], &ids, &count)) {
    napi_throw_type_error(env, nullptr, "kernels: ids must be an Int32Array");
    return nullptr;
  }
  const float* x = a.floats(0, count * cols, "x");
  if (!a.ok) return nullptr;
  const int64_t total = segments * cols;
#pragma omp parallel for simd schedule(static) if (total >= kParallelMin)
  for (int64_t i = 0; i < total; i++) out[i] = 0.0f;
  for (size_t i = 0; i < count; i++) {
    const int32_t s = ids[i];
    if (s < 0 || s >= segments) continue;
    float* dst = out + static_cast<int64_t>(s) * cols;
    const float* src = x + i * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; c++) dst[c] += src[c];
  }
  return nullptr;
}

// The float32 value of IEEE half bits h (exact: every half is a float). Subnormal halves are normalised.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        shift++;
      }
      // value = mantissa·2^-24 with the leading bit now at 10: 2^(-14 - shift) · 1.f
      bits = sign | (static_cast<uint32_t>(127 - 14 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// widenF16(src, dst, n): dst[i] = the float32 value of the half bits src[i] (a Uint16Array): the frozen backbones'
// 16-bit weights widened for a layer's run. F16C's vcvtph2ps when the CPU it was built for has it.
napi_value WidenF16(napi_env env, napi_callback_info info) {
  Args a(env, info, 3, "widenF16");
  const int64_t n = a.integer(2);
  float* dst = a.floats(1, n, "dst");
  if (!a.ok) return nullptr;
  uint16_t* src;
  size_t length;
  if (!TypedArrayData(env, a.argv[0], napi_uint16_array, &src, &length) || static_cast<int64_t>(length) < n) {
    napi_throw_type_error(env, nullptr, "kernels: widenF16's src must be a Uint16Array of at least n elements");
    return nullptr;
  }
  const int64_t blocks = n / 8;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; b++) {
#ifdef __F16C__
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + b * 8));
    _mm256_storeu_ps(dst + b * 8, _mm256_cvtph_ps(h));
#else
    for (int64_t i = b * 8; i < b * 8 + 8; i++) dst[i] = HalfToFloat(src[i]);
#endif
  }
  for (int64_t i = blocks * 8; i < n; i++) dst[i] = HalfToFloat(src[i]);
  return nullptr;
}

napi_value SetKernelThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n;
  CHECK_OR(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr), nullptr);
  CHECK_OR(napi_get_value_int32(env, argv[0], &n), nullptr);
  omp_set_num_threads(std::max(1, n));
  return nullptr;
}

// erf and exp as the kernels compute them (which = 0, 1), and libm's in double precision (2, 3), element-wise:
// for tests of the kernels' accuracy.
napi_value Approx(napi_env env, napi_callback_info info) {
  Args a(env, info, 4, "approx");
  const int64_t which = a.integer(0);
  const int64_t n = a.integer(3);
  const float* x = a.floats(1, n, "x");
  float* y = a.floats(2, n, "y");
  if (!a.ok) return nullptr;
  for (int64_t i = 0; i < n; i++) {
    switch (which) {
      case 0: y[i] = erfApprox(x[i]); break;
      case 1: y[i] = expApprox(x[i]); break;
      case 2: y[i] = static_cast<float>(std::erf(static_cast<double>(x[i]))); break;  // libm, double: the reference
      default: y[i] = static_cast<float>(std::exp(static_cast<double>(x[i])));
    }
  }
  return nullptr;
}

}  // namespace

bool RegisterKernels(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"geluForward", nullptr, GeluForward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"geluBackward", nullptr, GeluBackward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"layerNormForward", nullptr, LayerNormForward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"layerNormBackward", nullptr, LayerNormBackward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"softmaxForward", nullptr, SoftmaxForward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"softmaxBackward", nullptr, SoftmaxBackward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"crossEntropyForward", nullptr, CrossEntropyForward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"crossEntropyBackward", nullptr, CrossEntropyBackward, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"addRows", nullptr, AddRows, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"gatherRows", nullptr, GatherRows, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"scatterAddRows", nullptr, ScatterAddRows, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"widenF16", nullptr, WidenF16, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setKernelThreads", nullptr, SetKernelThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"approx", nullptr, Approx, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
