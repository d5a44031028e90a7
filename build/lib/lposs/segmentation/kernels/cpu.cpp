// Compiled CPU kernels for label propagation, loaded by cpu.py (torch.utils.cpp_extension.load).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <climits>
#include <memory>
#include <cstring>
#include <vector>

// out[c, y, x] += sum over offsets k = (dy, dx) of the r x r square without its centre, row-major,
// of S[k, y, x] * Z[c, y + dy, x + dx] for the channels c0 .. c0 + B - 1 (B = 1 or 4: four channels share
// each load of S). Neighbours outside the image contribute nothing.
template <int B>
static void stencil_row(const float* s, const float* z, float* o, int64_t H, int64_t W, int64_t half,
                        int64_t y, int64_t c0) {
  int64_t k = -1;
  for (int64_t dy = -half; dy <= half; ++dy) {
    for (int64_t dx = -half; dx <= half; ++dx) {
      if (dy == 0 && dx == 0) continue;
      ++k;
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= H) continue;
      const int64_t x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? W - dx : W;
      const float* __restrict__ sr = s + (k * H + y) * W;
      const float* __restrict__ z0 = z + (c0 * H + yy) * W + dx;
      float* __restrict__ o0 = o + (c0 * H + y) * W;
      if (B == 1) {
        #pragma omp simd
        for (int64_t x = x0; x < x1; ++x) o0[x] += sr[x] * z0[x];
        continue;
      }
      const float* __restrict__ z1 = z0 + H * W;
      const float* __restrict__ z2 = z1 + H * W;
      const float* __restrict__ z3 = z2 + H * W;
      float* __restrict__ o1 = o0 + H * W;
      float* __restrict__ o2 = o1 + H * W;
      float* __restrict__ o3 = o2 + H * W;
      #pragma omp simd
      for (int64_t x = x0; x < x1; ++x) {
        const float w = sr[x];
        o0[x] += w * z0[x];
        o1[x] += w * z1[x];
        o2[x] += w * z2[x];
        o3[x] += w * z3[x];
      }
    }
  }
}

torch::Tensor apply_stencil(torch::Tensor S, torch::Tensor Z, int64_t r) {
  TORCH_CHECK(S.is_contiguous() && Z.is_contiguous(), "apply_stencil: contiguous tensors expected");
  TORCH_CHECK(S.scalar_type() == at::kFloat && Z.scalar_type() == at::kFloat, "apply_stencil: float32 expected");
  const int64_t C = Z.size(0), H = Z.size(1), W = Z.size(2), half = r / 2;
  TORCH_CHECK(S.size(0) == r * r - 1 && S.size(1) == H && S.size(2) == W, "apply_stencil: shape mismatch");
  auto out = torch::zeros_like(Z);
  const float* s = S.data_ptr<float>();
  const float* z = Z.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, H, 1, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      int64_t c = 0;
      for (; c + 4 <= C; c += 4) stencil_row<4>(s, z, o, H, W, half, y, c);
      for (; c < C; ++c) stencil_row<1>(s, z, o, H, W, half, y, c);
    }
  });
  return out;
}

// Monotone map of a float to uint32: a < b as floats iff key(a) < key(b) as integers (NaN excluded upstream).
static inline uint32_t order_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? (u ^ 0xFFFFFFFFu) : (u | 0x80000000u);
}

// Key of the rank-th largest of keys[0 .. m), by a three-pass radix select on the bits (11, 11, 10), each
// pass over the survivors of the one before. On return, rank is how many entries equal to it are among the
// rank largest.
static uint32_t radix_select(const uint32_t* keys, int64_t m, int64_t& rank, uint32_t* survivors) {
  int64_t hist[2048];
  const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
  uint32_t prefix = 0, mask = 0;
  const uint32_t* src = keys;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass];
    const uint32_t digits = (1u << widths[pass]) - 1;
    std::fill(hist, hist + digits + 1, 0);
    for (int64_t j = 0; j < m; ++j) ++hist[(src[j] >> shift) & digits];
    int64_t digit = digits;
    while (hist[digit] < rank) rank -= hist[digit--];
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= digits << shift;
    int64_t kept = 0;
    for (int64_t j = 0; j < m; ++j) {  // branch-free: a data-dependent branch here mispredicts often
      survivors[kept] = src[j];
      kept += (src[j] & mask) == prefix;
    }
    src = survivors;
    m = kept;
  }
  return prefix;
}

// The k largest entries of every row of sims [R, N], as (values [R, k], columns [R, k]) with the columns of a
// row in ascending order; entries equal to the k-th largest fill the last places lowest column first.
std::vector<torch::Tensor> topk_sorted_columns(torch::Tensor sims, int64_t k) {
  TORCH_CHECK(sims.dim() == 2 && sims.is_contiguous() && sims.scalar_type() == at::kFloat,
              "topk_sorted_columns: contiguous float32 [R, N] expected");
  const int64_t R = sims.size(0), N = sims.size(1);
  TORCH_CHECK(k >= 1 && k <= N, "topk_sorted_columns: need 1 <= k <= N");
  auto values = torch::empty({R, k}, sims.options());
  auto columns = torch::empty({R, k}, sims.options().dtype(at::kLong));
  const float* s = sims.data_ptr<float>();
  float* v = values.data_ptr<float>();
  int64_t* c = columns.data_ptr<int64_t>();
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    std::vector<uint32_t> keys(N), survivors(N);
    std::vector<int64_t> picked(k + 1);
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = s + r * N;
      for (int64_t j = 0; j < N; ++j) keys[j] = order_key(row[j]);
      int64_t ties = k;
      const uint32_t kth = radix_select(keys.data(), N, ties, survivors.data());
      int64_t taken = 0;
      for (int64_t j = 0; j < N; ++j) {  // branch-free too, into a buffer of k + 1 (the last write may spill)
        const bool tie = keys[j] == kth && ties > 0;
        ties -= tie;
        picked[taken] = j;
        taken += (keys[j] > kth) | tie;
      }
      for (int64_t t = 0; t < k; ++t) {
        v[r * k + t] = row[picked[t]];
        c[r * k + t] = picked[t];
      }
    }
  });
  return {values, columns};
}

// D^-1/2 (W + W^T) D^-1/2 without its diagonal, as CSR (int32 row starts [N + 1], int32 columns [nnz], values [nnz]) with
// ascending columns, for W given by rows: columns [N, k] (ascending within a row) and weights [N, k].
// Entries present in both W and W^T are summed; D is the row sums, a zero row sum counting as 1.
std::vector<torch::Tensor> symmetric_normalised_csr(torch::Tensor columns, torch::Tensor weights) {
  TORCH_CHECK(columns.dim() == 2 && columns.sizes() == weights.sizes() && columns.is_contiguous() &&
              weights.is_contiguous() && columns.scalar_type() == at::kLong && weights.scalar_type() == at::kFloat,
              "symmetric_normalised_csr: contiguous int64 columns and float32 weights [N, k] expected");
  const int64_t N = columns.size(0), k = columns.size(1);
  const int64_t* col = columns.data_ptr<int64_t>();
  const float* w = weights.data_ptr<float>();
  // int32 indices: CSR products read them on every CG step, and half the bytes make those products faster.
  TORCH_CHECK(2 * N * k < INT32_MAX, "symmetric_normalised_csr: too many entries for int32 indices");
  // Scratch buffers, uninitialised (every entry read is written first).
  std::unique_ptr<int32_t[]> t_col(new int32_t[N * k]), m_col(new int32_t[2 * N * k]);
  std::unique_ptr<float[]> t_val(new float[N * k]), m_val(new float[2 * N * k]);
  std::vector<int64_t> t_start(N + 1, 0);
  std::vector<float> inv_sqrt(N);
  // W^T by counting sort: row j of W^T lists the rows i of W that hold j, in ascending i.
  for (int64_t e = 0; e < N * k; ++e) ++t_start[col[e] + 1];
  for (int64_t j = 0; j < N; ++j) t_start[j + 1] += t_start[j];
  // Each thread fills the rows of W^T in its own range of j, scanning all of W (reads are cheap, writes not).
  at::parallel_for(0, N, 1, [&](int64_t j0, int64_t j1) {
    std::vector<int64_t> fill(t_start.begin() + j0, t_start.begin() + j1);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t e = i * k; e < (i + 1) * k; ++e) {
        const int64_t j = col[e];
        if (j < j0 || j >= j1) continue;
        const int64_t at = fill[j - j0]++;
        t_col[at] = static_cast<int32_t>(i);
        t_val[at] = w[e];
      }
  });
  // Row i of W + W^T is the merge of two ascending lists, at most k + (entries of row i of W^T) long: merged
  // into the scratch buffer at those offsets, then packed into CSR and normalised.
  auto row_starts = torch::zeros({N + 1}, columns.options().dtype(at::kInt));
  int32_t* crow = row_starts.data_ptr<int32_t>();
  at::parallel_for(0, N, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t a = i * k, a_end = a + k, b = t_start[i], b_end = t_start[i + 1], n = i * k + t_start[i];
      const int64_t first = n;
      float degree = 0.f;
      while (a < a_end || b < b_end) {
        const int64_t ca = a < a_end ? col[a] : N, cb = b < b_end ? t_col[b] : N;
        const int64_t j = ca < cb ? ca : cb;
        float value = 0.f;
        if (ca == j) value += w[a++];
        if (cb == j) value += t_val[b++];
        if (j == i) continue;  // zero diagonal
        m_col[n] = static_cast<int32_t>(j);
        m_val[n++] = value;
        degree += value;
      }
      crow[i + 1] = static_cast<int32_t>(n - first);
      inv_sqrt[i] = 1.f / std::sqrt(degree > 0.f ? degree : 1.f);  // a zero degree counts as 1
    }
  });
  for (int64_t i = 0; i < N; ++i) crow[i + 1] += crow[i];
  auto out_columns = torch::empty({crow[N]}, row_starts.options());
  auto out_values = torch::empty({crow[N]}, weights.options());
  int32_t* oc = out_columns.data_ptr<int32_t>();
  float* ov = out_values.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t from = i * k + t_start[i];
      for (int64_t e = crow[i]; e < crow[i + 1]; ++e) {
        const int32_t j = m_col[from + e - crow[i]];
        oc[e] = j;
        ov[e] = m_val[from + e - crow[i]] * inv_sqrt[i] * inv_sqrt[j];
      }
    }
  });
  return {row_starts, out_columns, out_values};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply_stencil", &apply_stencil, "out[c, p] = sum_o S[o, p] z[c, p + o] over the r x r stencil");
  m.def("topk_sorted_columns", &topk_sorted_columns, "exact top-k of each row, in column order");
  m.def("symmetric_normalised_csr", &symmetric_normalised_csr, "D^-1/2 (W + W^T) D^-1/2 without diagonal, as CSR");
}
