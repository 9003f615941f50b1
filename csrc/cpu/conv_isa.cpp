// The 3x3 convolution's Winograd F(2x2, 3x3) kernel (cpu/conv_isa.h). A work item is a block of T = 2 vectors of
// output tiles (along one tile row, or across rows on maps narrower than T tiles): the 4 x 4 input patches of every
// input channel go through B^T d B into V (16, Ci, T),
// then 16 products M[xi] (co_pad, T) = U[xi] (co_pad, Ci) V[xi] (Ci, T) in register blocks of R output channels x T
// tiles (each V vector feeds R FMAs, each broadcast weight 2), then A^T M A plus the bias into the output rows. V and
// M stay in the thread's L2 between the three steps; only x, u and y move through memory.
#include "cpu/conv_isa.h"

#include "cpu/isa_vec.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int L = kLanes<float>;
constexpr int T = 2 * L;                         // tiles per work item (a vector pair)
constexpr int R = kVectorBytes == 64 ? 12 : 6;  // output channels per register block: 2 R accumulators
static_assert(kConvPack % R == 0, "a register block lies inside one of u's packed blocks");

inline vec<float> load(const float* p) { return *reinterpret_cast<const vec<float>*>(p); }
inline void store(float* p, vec<float> v) { *reinterpret_cast<vec<float>*>(p) = v; }

// The tiles of a work item: a block of T along one tile row (b, i, j0 + t) when rows are at least T tiles long,
// else T consecutive tiles of the batch in (b, i, j) order, which may span rows and images (narrow maps).
struct Item {
  int64_t k0;  // flat: first tile index; rows: unused
  int64_t b, i, j0;
  bool flat;
};

// d[r][col][t]: the 4 x 4 input patch of tile t in channel ci (rows 2i - 1 .. 2i + 2, columns 2j - 1 .. 2j + 2),
// zeros outside the image and for tiles past the batch's last.
void stage(const Conv3x3& c, const Item& it, int64_t ci, float (*d)[4][T]) {
  const int64_t H = c.H, W = c.W;
  if (!it.flat) {
    const float* plane = c.x + (it.b * c.Ci + ci) * H * W;
    const int64_t x0 = 2 * it.j0 - 1;
    const int64_t lo = x0 < 0 ? 0 : x0, hi = x0 + 2 * T + 2 < W ? x0 + 2 * T + 2 : W;
    for (int r = 0; r < 4; ++r) {
      const int64_t yy = 2 * it.i - 1 + r;
      float row[2 * T + 2];
      for (int k = 0; k < 2 * T + 2; ++k) row[k] = 0.f;
      if (yy >= 0 && yy < H)
        for (int64_t xx = lo; xx < hi; ++xx) row[xx - x0] = plane[yy * W + xx];
      for (int col = 0; col < 4; ++col)
        for (int t = 0; t < T; ++t) d[r][col][t] = row[2 * t + col];
    }
    return;
  }
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2, tiles = c.B * th * tw;
  for (int t = 0; t < T; ++t) {
    const int64_t k = it.k0 + t, b = k / (th * tw), i = k / tw % th, j = k % tw;
    const float* plane = c.x + (b * c.Ci + ci) * H * W;
    for (int r = 0; r < 4; ++r)
      for (int col = 0; col < 4; ++col) {
        const int64_t yy = 2 * i - 1 + r, xx = 2 * j - 1 + col;
        d[r][col][t] = k < tiles && yy >= 0 && yy < H && xx >= 0 && xx < W ? plane[yy * W + xx] : 0.f;
      }
  }
}

// V[xi][ci][t] = (B^T d_t B)[xi] for every input channel.
void input_transform(const Conv3x3& c, const Item& it, float* V) {
  const int64_t s = c.Ci * T;
  for (int64_t ci = 0; ci < c.Ci; ++ci) {
    alignas(64) float d[4][4][T];
    stage(c, it, ci, d);
    for (int n = 0; n < T; n += L) {
      vec<float> e[4][4];  // (B^T d)[row][col]
      for (int col = 0; col < 4; ++col) {
        const vec<float> d0 = load(&d[0][col][n]), d1 = load(&d[1][col][n]), d2 = load(&d[2][col][n]),
                         d3 = load(&d[3][col][n]);
        e[0][col] = d0 - d2, e[1][col] = d1 + d2, e[2][col] = d2 - d1, e[3][col] = d1 - d3;
      }
      for (int r = 0; r < 4; ++r) {
        float* v = V + (4 * r) * s + ci * T + n;
        store(v, e[r][0] - e[r][2]);
        store(v + s, e[r][1] + e[r][2]);
        store(v + 2 * s, e[r][2] - e[r][1]);
        store(v + 3 * s, e[r][1] - e[r][3]);
      }
    }
  }
}

constexpr int64_t kChunk = 32;  // input channels per partial sum: two-level summation over C_in

// M[xi][co][t] = sum_ci U[xi][co][ci] V[xi][ci][t] for every xi and co < co_pad, as sums of kChunk-channel
// partial sums (in a diagnostic script, one running sum over 640 channels had 3x a direct convolution's error).
void products(const Conv3x3& c, const float* V, float* M) {
  const int64_t Ci = c.Ci, blocks = c.co_pad / R;
  for (int xi = 0; xi < 16; ++xi)
    for (int64_t cob = 0; cob < blocks; ++cob) {
      const int64_t co0 = cob * R;  // u's block co0 / kConvPack, from its row co0 % kConvPack
      const float* u = c.u + ((xi * c.co_pad + co0) / kConvPack * Ci) * kConvPack + co0 % kConvPack;
      const float* v = V + xi * Ci * T;
      vec<float> sum[R][2] = {};
      for (int64_t c0 = 0; c0 < Ci; c0 += kChunk) {
        const int64_t c1 = c0 + kChunk < Ci ? c0 + kChunk : Ci;
        vec<float> acc[R][2] = {};
        for (int64_t ci = c0; ci < c1; ++ci) {
          const vec<float> v0 = load(v + ci * T), v1 = load(v + ci * T + L);
          for (int r = 0; r < R; ++r) {
            const float w = u[ci * kConvPack + r];
            acc[r][0] += w * v0;
            acc[r][1] += w * v1;
          }
        }
        for (int r = 0; r < R; ++r) sum[r][0] += acc[r][0], sum[r][1] += acc[r][1];
      }
      float* m = M + (xi * c.co_pad + cob * R) * T;
      for (int r = 0; r < R; ++r) store(m + r * T, sum[r][0]), store(m + r * T + L, sum[r][1]);
    }
}

// The output pixels of every tile and output channel: A^T M A + bias (clipped to the image).
void output_transform(const Conv3x3& c, const Item& it, const float* M) {
  const int64_t H = c.H, W = c.W, s = c.co_pad * T;
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2, tiles = c.B * th * tw;
  const int64_t cols = 2 * it.j0 + 2 * T <= W ? 2 * T : W - 2 * it.j0;
  for (int64_t co = 0; co < c.Co; ++co) {
    alignas(64) float out[2][2][T];  // [row p][column q][tile]
    const vec<float> bias = c.bias ? c.bias[co] - vec<float>{} : vec<float>{};
    for (int n = 0; n < T; n += L) {
      vec<float> a[2][4];  // (M A)[q][row]
      for (int r = 0; r < 4; ++r) {
        const float* m = M + (4 * r) * s + co * T + n;
        const vec<float> m0 = load(m), m1 = load(m + s), m2 = load(m + 2 * s), m3 = load(m + 3 * s);
        a[0][r] = m0 + m1 + m2;
        a[1][r] = m1 - m2 - m3;
      }
      for (int q = 0; q < 2; ++q) {
        store(&out[0][q][n], a[q][0] + a[q][1] + a[q][2] + bias);
        store(&out[1][q][n], a[q][1] - a[q][2] - a[q][3] + bias);
      }
    }
    if (!it.flat) {
      float* plane = c.y + (it.b * c.Co + co) * H * W;
      for (int p = 0; p < 2 && 2 * it.i + p < H; ++p) {
        float* row = plane + (2 * it.i + p) * W + 2 * it.j0;
        for (int64_t k = 0; k < cols; ++k) row[k] = out[p][k % 2][k / 2];
      }
      continue;
    }
    for (int t = 0; t < T && it.k0 + t < tiles; ++t) {
      const int64_t k = it.k0 + t, b = k / (th * tw), i = k / tw % th, j = k % tw;
      float* plane = c.y + (b * c.Co + co) * H * W;
      for (int p = 0; p < 2 && 2 * i + p < H; ++p)
        for (int q = 0; q < 2 && 2 * j + q < W; ++q) plane[(2 * i + p) * W + 2 * j + q] = out[p][q][t];
    }
  }
}

void winograd(const Conv3x3& c, int64_t begin, int64_t end, float* scratch) {
  const int64_t th = (c.H + 1) / 2, tw = (c.W + 1) / 2, nb = (tw + T - 1) / T;
  float* V = scratch;
  float* M = scratch + 16 * c.Ci * T;
  for (int64_t item = begin; item < end; ++item) {
    const Item it = conv_tiles_across_rows(c.W, T) ? Item{item * T, 0, 0, 0, true}
                                                   : Item{0, item / (th * nb), item / nb % th, item % nb * T, false};
    input_transform(c, it, V);
    products(c, V, M);
    output_transform(c, it, M);
  }
}

}  // namespace

extern const ConvIsa kConv{T, &winograd};

}  // namespace fastar::cpu::FASTAR_ISA
