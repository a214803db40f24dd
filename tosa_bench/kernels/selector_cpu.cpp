// ToSA's token selector for CPU inference, one query row at a time (see selector_cpu.py).
//
// For every (image b, query row r) the row's logits x[h][0..N) (H heads) go through
//   hidden[c][j] = relu(b1[c] + sum_{h,t} w1[c][h][t] x[h][j + t - p])      (Conv1d H -> C)
//   z[h][j]      =      b2[h] + sum_{c,t} w2[h][c][t] hidden[c][j + t - p]   (Conv1d C -> H)
// with zero padding p = (K - 1) / 2 along the keys, and then
//   received[b][j] += sum_h softmax_j(z[h][.])[j].
// All of a row's intermediates (H x N inputs, C x N hidden, H x N logits) stay in a few KiB
// of per-thread scratch, so the (B, H, N, N) maps are read once and nothing map-sized is
// written (except z itself when the caller keeps the predicted logits). The inner loops run
// along the keys, which the compiler vectorises.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// The kernel is compiled for two vector widths, 32 and 64 bytes (8 or 16 floats: one AVX2
// or one AVX-512 register; on narrower hardware the compiler splits them), and the faster
// one on the machine is chosen by timing (selector_cpu.py), not assumed: on an AVX-512
// CPU the 64-byte form ran 1.5x faster; on an AVX2-only one its 12 sums of 64 bytes would
// need 24 of the 16 registers (not measured: no such CPU was at hand since this was written).
constexpr int64_t CB = 6;  // output channels whose sums stay in registers together
constexpr int64_t TJ = 2;  // vectors of keys computed together

template <int64_t L>
struct Lanes {
  typedef float vec __attribute__((vector_size(L * sizeof(float))));
  typedef int32_t ivec __attribute__((vector_size(L * sizeof(int32_t))));
};

template <typename V>
inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

template <typename V>
inline V relu(V v) { return v > 0.f ? v : V{}; }

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// exp(x) for x <= 0 (a logit minus its row's maximum), inline and to float rounding:
// x log2(e) = n + f with n an integer and |f| <= 1/2; 2^f by the Taylor series of e^(f ln 2)
// to degree 6 (relative error below 1.2e-7), 2^n written into the exponent bits. Below -87
// (where exp is under 2^-125) it gives 0. Inline, this made the whole kernel 25-40% faster
// than calls to libmvec's vector expf did on the 2-core AMD EPYC (fp32, DeiT-S maps).
template <int64_t L>
inline typename Lanes<L>::vec exp_nonpositive(typename Lanes<L>::vec x) {
  typedef typename Lanes<L>::vec vec;
  typedef typename Lanes<L>::ivec ivec;
  const vec t = (x > -87.f ? x : vec{} - 87.f) * 1.4426950408889634f;
  const ivec n = __builtin_convertvector(t - 0.5f, ivec);  // truncates toward zero: round(t), t <= 0
  const vec f = (t - __builtin_convertvector(n, vec)) * 0.6931471805599453f;
  vec p = vec{} + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  const ivec bits = (n + 127) << 23;
  vec scale;
  __builtin_memcpy(&scale, &bits, sizeof(vec));
  return x > -87.f ? p * scale : vec{};
}

// Largest of len floats (len a multiple of L).
template <int64_t L>
inline float max_of(const float* p, int64_t len) {
  typedef typename Lanes<L>::vec vec;
  vec mv = load<vec>(p);
  for (int64_t j = L; j < len; j += L) {
    const vec v = load<vec>(p + j);
    mv = v > mv ? v : mv;
  }
  float m = mv[0];
  for (int64_t k = 1; k < L; ++k) m = std::max(m, mv[k]);
  return m;
}

// p[j] = exp(p[j] - m) in place; returns their sum (len a multiple of L).
template <int64_t L>
inline float exp_sum(float* p, int64_t len, float m) {
  typedef typename Lanes<L>::vec vec;
  vec sv{};
  for (int64_t j = 0; j < len; j += L) {
    const vec e = exp_nonpositive<L>(load<vec>(p + j) - m);
    store(p + j, e);
    sv += e;
  }
  float s = 0.f;
  for (int64_t k = 0; k < L; ++k) s += sv[k];
  return s;
}

void check(const at::Tensor& t, int64_t dim, const char* name, bool maps = false) {
  const auto type = t.scalar_type();
  const bool ok = type == at::kFloat || (maps && (type == at::kBFloat16 || type == at::kHalf));
  TORCH_CHECK(t.device().is_cpu() && ok, name, maps ? " must be a float32, bfloat16 or float16 CPU tensor" : " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim && t.is_contiguous(), name, " must be a contiguous ", dim, "-d tensor");
}

// Copies n entries of a T array from `offset` into dst as float32.
template <typename T>
inline void widen(const void* data, int64_t offset, int64_t n, float* dst) {
  const T* p = static_cast<const T*>(data) + offset;
  std::copy(p, p + n, dst);
}

// The maps in their own dtype: a row is widened to float32 as it is copied into the
// kernel's scratch, so 16-bit maps are read once at half the bytes, with no float32 copy
// of the whole batch made first.
struct Maps {
  const void* data;
  at::ScalarType type;
  explicit Maps(const at::Tensor& t) : data(t.data_ptr()), type(t.scalar_type()) {}
  void row_into(int64_t offset, int64_t n, float* dst) const {
    if (type == at::kBFloat16) widen<at::BFloat16>(data, offset, n, dst);
    else if (type == at::kHalf) widen<at::Half>(data, offset, n, dst);
    else widen<float>(data, offset, n, dst);
  }
};

// Weights (out, in, K) -> [in][K][out rounded up to CB] with zeros in the extra outputs, so
// the CB weights one input tap gives a block of outputs are adjacent.
std::vector<float> regroup(const at::Tensor& w, int64_t out_pad) {
  const int64_t O = w.size(0), I = w.size(1), K = w.size(2);
  std::vector<float> g(I * K * out_pad, 0.f);
  const float* src = w.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t t = 0; t < K; ++t) g[(i * K + t) * out_pad + o] = src[(o * I + i) * K + t];
  return g;
}

// CB outputs x J vectors of keys starting at key j: out[o][j..] = bias[o] + sum_{i, t}
// w[i][t][o] * in[i][j + t + ..]. The CB x J sums stay in registers across all in_ch x K
// taps: per tap, J loads of keys and CB weights give CB x J multiply-adds (with J = TJ,
// 12 sums + 2 inputs + 1 weight = 15 registers: of AVX2's 16, or of AVX-512's 32).
template <int64_t L, int64_t J>
inline void conv_block(const float* in, int64_t in_ch, int64_t in_width, const float* w, const float* bias, int64_t o0,
                       int64_t on, int64_t out_pad, int64_t K, int64_t j, float* out, int64_t out_stride, bool with_relu) {
  typedef typename Lanes<L>::vec vec;
  vec acc[J][CB];
  for (int64_t k = 0; k < CB; ++k) {
    const float b = k < on ? bias[o0 + k] : 0.f;
    for (int64_t q = 0; q < J; ++q) acc[q][k] = vec{} + b;
  }
  for (int64_t i = 0; i < in_ch; ++i) {
    for (int64_t t = 0; t < K; ++t) {
      vec x[J];
      for (int64_t q = 0; q < J; ++q) x[q] = load<vec>(in + i * in_width + j + t + q * L);
      const float* wt = w + (i * K + t) * out_pad + o0;
      for (int64_t k = 0; k < CB; ++k) {
        const float wk = wt[k];
        for (int64_t q = 0; q < J; ++q) acc[q][k] += wk * x[q];
      }
    }
  }
  for (int64_t k = 0; k < on; ++k)
    for (int64_t q = 0; q < J; ++q) store(out + (o0 + k) * out_stride + j + q * L, with_relu ? relu(acc[q][k]) : acc[q][k]);
}

// out[o][j] = bias[o] + sum_{i, t} w[i][t][o] * in[i][j + t] for j in [0, n_pad) (n_pad a
// multiple of L): `in` holds in_ch rows of in_width floats, each with its zero padding in
// place (see the caller), and out rows are out_stride apart. Keys go TJ vectors at a time,
// and a last single vector where n_pad is not a multiple of TJ x L, so no more than L - 1
// padding keys are computed (DeiT's 197 keys: 208 with 16 floats a vector, not 224).
template <int64_t L>
void conv_rows(const float* in, int64_t in_ch, int64_t in_width, const float* w, const float* bias, int64_t out_ch,
               int64_t out_pad, int64_t K, int64_t n_pad, float* out, int64_t out_stride, bool with_relu) {
  for (int64_t o0 = 0; o0 < out_ch; o0 += CB) {
    const int64_t on = std::min(CB, out_ch - o0);
    int64_t j = 0;
    for (; j + TJ * L <= n_pad; j += TJ * L)
      conv_block<L, TJ>(in, in_ch, in_width, w, bias, o0, on, out_pad, K, j, out, out_stride, with_relu);
    for (; j < n_pad; j += L) conv_block<L, 1>(in, in_ch, in_width, w, bias, o0, on, out_pad, K, j, out, out_stride, with_relu);
  }
}

template <int64_t L>
std::vector<at::Tensor> received_with(const at::Tensor& logits, const at::Tensor& w1, const at::Tensor& b1,
                                      const at::Tensor& w2, const at::Tensor& b2, bool keep_logits) {
  typedef typename Lanes<L>::vec vec;
  check(logits, 4, "logits", true);
  check(w1, 3, "w1");
  check(b1, 1, "b1");
  check(w2, 3, "w2");
  check(b2, 1, "b2");
  const int64_t B = logits.size(0), H = logits.size(1), R = logits.size(2), N = logits.size(3);
  const int64_t C = w1.size(0), K = w1.size(2), P = (K - 1) / 2;
  TORCH_CHECK(w1.size(1) == H && w2.size(0) == H && w2.size(1) == C && w2.size(2) == K && b1.size(0) == C && b2.size(0) == H,
              "selector weights do not fit the logits' heads");
  TORCH_CHECK(K % 2 == 1, "kernel size must be odd");

  // A row of N keys is computed over n_pad = N rounded up to L; an input row is stored with
  // P zeros before it and zeros after it up to n_pad + K - 1 floats, so tap t of output j
  // reads position j + t (that is, key j + t - P, zero outside 0..N-1).
  const int64_t n_pad = round_up(N, L), width = n_pad + K - 1;
  const std::vector<float> g1 = regroup(w1, round_up(C, CB)), g2 = regroup(w2, round_up(H, CB));
  const int threads = at::get_num_threads();
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor partial = at::zeros({threads, B, n_pad}, f32);
  at::Tensor z_out = keep_logits ? at::empty({B, H, R, N}, f32) : at::Tensor();
  const Maps X(logits);
  const float* B1 = b1.data_ptr<float>();
  const float* B2 = b2.data_ptr<float>();
  float* Z = keep_logits ? z_out.data_ptr<float>() : nullptr;
  float* PART = partial.data_ptr<float>();

  at::parallel_for(0, B * R, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xp(H * width, 0.f), hp(C * width, 0.f), z(H * n_pad), inv(H);
    float* acc_all = PART + static_cast<int64_t>(at::get_thread_num()) * B * n_pad;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / R, r = row % R;
      for (int64_t h = 0; h < H; ++h) X.row_into(((b * H + h) * R + r) * N, N, xp.data() + h * width + P);
      // hidden = relu(conv1(x)), written after P zeros; keys N..n_pad-1 are not keys: zero
      // them, they are the next convolution's padding
      conv_rows<L>(xp.data(), H, width, g1.data(), B1, C, round_up(C, CB), K, n_pad, hp.data() + P, width, true);
      for (int64_t c = 0; c < C; ++c) std::fill(hp.data() + c * width + P + N, hp.data() + c * width + P + n_pad, 0.f);
      conv_rows<L>(hp.data(), C, width, g2.data(), B2, H, round_up(H, CB), K, n_pad, z.data(), n_pad, false);
      for (int64_t h = 0; h < H; ++h) {
        float* zz = z.data() + h * n_pad;
        if (Z != nullptr) std::copy(zz, zz + N, Z + ((b * H + h) * R + r) * N);
        // keys N..n_pad-1 are not keys: first copies of key 0 (they cannot change the max),
        // then far below the max (their exp is 0), so every loop runs over whole vectors
        std::fill(zz + N, zz + n_pad, zz[0]);
        const float m = max_of<L>(zz, n_pad);
        std::fill(zz + N, zz + n_pad, m - 1000.f);
        inv[h] = 1.f / exp_sum<L>(zz, n_pad, m);
      }
      // received[j] += sum_h e_h[j] / s_h, one pass over the image's keys for all heads
      // (its row of partial sums is n_pad long; keys N..n_pad-1 add 0)
      float* acc = acc_all + b * n_pad;
      for (int64_t j = 0; j < n_pad; j += L) {
        vec a = load<vec>(acc + j);
        for (int64_t h = 0; h < H; ++h) a += inv[h] * load<vec>(z.data() + h * n_pad + j);
        store(acc + j, a);
      }
    }
  });
  at::Tensor received = partial.sum(0).narrow(1, 0, N).contiguous();  // the threads' partial sums
  return {received, keep_logits ? z_out : at::empty({0}, f32)};
}

}  // namespace

// The vector widths (bytes) this build offers; selector_received takes one of them.
std::vector<int64_t> vector_bytes() { return {32, 64}; }

std::vector<at::Tensor> selector_received(const at::Tensor& logits, const at::Tensor& w1, const at::Tensor& b1,
                                          const at::Tensor& w2, const at::Tensor& b2, bool keep_logits, int64_t vector_bytes) {
  if (vector_bytes == 32) return received_with<8>(logits, w1, b1, w2, b2, keep_logits);
  if (vector_bytes == 64) return received_with<16>(logits, w1, b1, w2, b2, keep_logits);
  TORCH_CHECK(false, "vector_bytes must be 32 or 64, got ", vector_bytes);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selector_received", &selector_received, "ToSA selector: attention received per key (CPU, float32)");
  m.def("vector_bytes", &vector_bytes, "the vector widths (bytes) selector_received takes");
}
