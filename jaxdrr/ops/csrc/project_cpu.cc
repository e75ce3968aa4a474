// The CPU projector of jaxdrr as XLA FFI handlers: the contract of jaxdrr/ops/march.py in C++.
//
// Inputs are the rays of jaxdrr.ops.rays.detector_rays (padded index coordinates) and the
// zero-padded, channels-last, flattened volume flat[(i * J2 + j) * K2 + k, c] over the padded shape
// (I2, J2, K2). For every ray r and channel c:
//
//   out[r, c] = step[r] * sum_{k < num_steps[r]} f_c(entry[r] + (k + 1/2) step[r] direction[r])
//
// with f the trilinear field of jaxdrr/ops/trilinear.py (`sample`), or in "planes" mode the bilinear
// field on the voxel-centre plane of each ray's dominant axis (`sample_planes`). Same support mask,
// same clipping of the cell, same lerp order as the JAX code.
//
// Handlers (registered by jaxdrr/ops/native_project.py):
//   * jaxdrr_project_fwd: the line integrals [..., R, C];
//   * jaxdrr_project_bwd_geometry: gather only, re-marches the rays and returns g_entry and
//     g_direction [..., R, 3] (march._chunk_backward; g_step follows in JAX);
//   * jaxdrr_project_bwd_volume: scatter only, g_flat [..., N, C] = sum g * step * corner weights.
//     Deterministic and independent of the thread count: the volume is cut into slabs of i-planes,
//     every voxel belongs to exactly one slab, and the slab's owner adds its contributions in one
//     fixed order (tile by tile, sample by sample, ray by ray). No atomics, no partial copies.
//   * jaxdrr_pad_channels_last: march.pad_channels_last ([..., C, I, J, K] -> [..., N, C]) and,
//     with unpad = 1, its transpose.
//
// Batching (jax.ffi.ffi_call with vmap_method="expand_dims"): every operand has the same number of
// leading batch axes; each is either 1 (shared, e.g. the volume when only the pose is batched) or
// the output's size. The handlers broadcast them, so a vmap over poses is one call.
//
// Threads: std::thread over work items (tiles of neighbouring detector pixels, or volume slabs),
// taken from a shared counter. Default: the process's CPU affinity count; JAXDRR_CPU_THREADS=n
// sets it (read at each call). The rays of one tile (up to 16 x 16 pixels) are marched in
// lockstep, sample k of all rays then k + 1, which keeps the volume region in use small, with
// software prefetch of the region a few voxels ahead (the march is otherwise bound by cache-miss
// latency). Inner loops: branch-free over the rays of the tile (selects instead of branches),
// vectorised by the compiler (portable -O3 build); on x86-64 with AVX2 + FMA (checked at run time;
// JAXDRR_CPU_NO_AVX2=1 disables) an AVX2 build of the float32 loops, with two specialisations:
// one channel (the corner pairs along k are 64-bit gathers) and 2-4 channels (a corner's channels
// are one 4-lane load; JAXDRR_CPU_GATHER_CHANNELS=1 selects the plain gather form instead, for
// tests). The volume scatter is scalar.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define JAXDRR_EXPORT extern "C" __attribute__((visibility("default")))
#define JAXDRR_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define JAXDRR_X86 1
#define JAXDRR_AVX2 __attribute__((target("avx2,fma")))
#else
#define JAXDRR_X86 0
#endif

namespace jaxdrr {
namespace {

constexpr int kTile = 256;   // rays per tile (16 x 16 detector pixels)
constexpr int kGroup = 4;    // channels per pass over a tile
constexpr int kMaxBatch = 8; // leading batch axes (nested vmaps)
// Software prefetch of the volume ahead of the marching tile: the march is bound by the latency of
// cache misses otherwise (measured on 256^3: the forward 2x faster with it). Distances in voxels.
constexpr double kPrefetchVoxels = 8.0;
constexpr double kPrefetchEveryVoxels = 2.0;

// ------------------------------------------------------------------------------------------------
// Threads

int DefaultThreads() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int NumThreads() {
  int n = DefaultThreads();
  if (const char* env = std::getenv("JAXDRR_CPU_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && v > 0) n = static_cast<int>(std::min<long>(v, 1024));
  }
  return n;
}

// fn(item) for every item in [0, items), on up to `threads` threads (the caller's included).
template <typename Fn>
void ParallelFor(int64_t items, int threads, const Fn& fn) {
  const int64_t used = std::min<int64_t>(threads, items);
  if (used <= 1) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= items) return;
      fn(i);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(used - 1));
  for (int64_t t = 1; t < used; ++t) {
    try {
      pool.emplace_back(worker);
    } catch (...) {
      break;  // fewer threads (resource limits): the others take the work
    }
  }
  worker();
  for (auto& th : pool) th.join();
}

// ------------------------------------------------------------------------------------------------
// Batch broadcasting over leading axes

struct Batch {
  int rank = 0;
  int64_t dims[kMaxBatch] = {};
  int64_t count = 1;
};

struct Operand {
  int64_t stride[kMaxBatch] = {};  // elements per step of each batch axis; 0 = broadcast
};

int64_t Offset(const Batch& b, const Operand& o, int64_t index) {
  int64_t off = 0;
  for (int d = b.rank - 1; d >= 0; --d) {
    const int64_t i = index % b.dims[d];
    index /= b.dims[d];
    off += i * o.stride[d];
  }
  return off;
}

// Checks buf = [batch..., core...] with core dims `core` (-1 = any) and fills its batch strides.
std::string CheckOperand(const char* name, const ffi::AnyBuffer& buf, std::vector<int64_t> core,
                         const Batch& b, Operand* op) {
  const auto dims = buf.dimensions();
  const int core_rank = static_cast<int>(core.size());
  if (static_cast<int>(dims.size()) != b.rank + core_rank) {
    return std::string(name) + ": rank " + std::to_string(dims.size()) + ", expected " +
           std::to_string(b.rank + core_rank);
  }
  int64_t core_size = 1;
  for (int i = 0; i < core_rank; ++i) {
    const int64_t n = dims[b.rank + i];
    if (core[i] >= 0 && n != core[i]) {
      return std::string(name) + ": dimension " + std::to_string(b.rank + i) + " is " +
             std::to_string(n) + ", expected " + std::to_string(core[i]);
    }
    core_size *= n;
  }
  int64_t stride = core_size;
  for (int d = b.rank - 1; d >= 0; --d) {
    const int64_t n = dims[d];
    if (n != 1 && n != b.dims[d]) {
      return std::string(name) + ": batch axis " + std::to_string(d) + " has size " + std::to_string(n) +
             ", expected 1 or " + std::to_string(b.dims[d]);
    }
    op->stride[d] = (n == 1) ? 0 : stride;
    stride *= n;
  }
  return "";
}

std::string MakeBatch(const ffi::AnyBuffer& out, int core_rank, Batch* b) {
  const auto dims = out.dimensions();
  const int rank = static_cast<int>(dims.size()) - core_rank;
  if (rank < 0 || rank > kMaxBatch) return "output rank " + std::to_string(dims.size()) + " not supported";
  b->rank = rank;
  b->count = 1;
  for (int d = 0; d < rank; ++d) {
    b->dims[d] = dims[d];
    b->count *= dims[d];
  }
  return "";
}

// ------------------------------------------------------------------------------------------------
// Grid, tiles

struct Grid {
  int64_t I2, J2, K2, C;
  bool planes;
};

// Rays are row-major over a rows x width detector; a tile is a TH x TW block of pixels.
struct Tiling {
  int64_t rays, rows, width, th, tw, tiles_y, tiles_x;

  static Tiling Make(int64_t rays, int64_t width) {
    Tiling t;
    t.rays = rays;
    if (width <= 0 || rays % width != 0) width = std::max<int64_t>(rays, 1);
    t.width = width;
    t.rows = rays / width;
    const int64_t th0 = std::min<int64_t>(t.rows, 16);
    t.tw = std::min<int64_t>(width, std::max<int64_t>(1, kTile / std::max<int64_t>(th0, 1)));
    t.th = std::min<int64_t>(t.rows, std::max<int64_t>(1, kTile / t.tw));
    t.tiles_y = t.rows > 0 ? (t.rows + t.th - 1) / t.th : 0;
    t.tiles_x = (t.width + t.tw - 1) / t.tw;
    return t;
  }
  int64_t count() const { return tiles_y * tiles_x; }
};

template <typename T>
struct alignas(64) Tile {
  T ex[kTile], ey[kTile], ez[kTile], dx[kTile], dy[kTile], dz[kTile], h[kTile];
  T ahead[kTile];  // prefetch distance (mm): kPrefetchVoxels along the ray's dominant axis
  int32_t n[kTile];
  int32_t axis[kTile];
  int64_t ray[kTile];
  int count;     // real rays
  int lanes;     // count rounded up to a multiple of 16 (padding lanes have n = 0)
  int kmax;
  int pf_every;  // prefetch every pf_every samples (about kPrefetchEveryVoxels of travel)
};

template <typename T>
void LoadTile(const Tiling& tl, int64_t tile, const T* entry, const T* direction, const T* step,
              const int32_t* num_steps, Tile<T>* t) {
  const int64_t ty = tile / tl.tiles_x, tx = tile % tl.tiles_x;
  const int64_t y0 = ty * tl.th, y1 = std::min(tl.rows, y0 + tl.th);
  const int64_t x0 = tx * tl.tw, x1 = std::min(tl.width, x0 + tl.tw);
  int m = 0, kmax = 0;
  double max_voxels_per_step = 0.0;
  for (int64_t y = y0; y < y1; ++y) {
    for (int64_t x = x0; x < x1; ++x) {
      const int64_t r = y * tl.width + x;
      t->ray[m] = r;
      t->ex[m] = entry[3 * r];
      t->ey[m] = entry[3 * r + 1];
      t->ez[m] = entry[3 * r + 2];
      const T dx = direction[3 * r], dy = direction[3 * r + 1], dz = direction[3 * r + 2];
      t->dx[m] = dx;
      t->dy[m] = dy;
      t->dz[m] = dz;
      t->h[m] = step[r];
      const int32_t n = std::max<int32_t>(num_steps[r], 0);
      t->n[m] = n;
      kmax = std::max(kmax, static_cast<int>(n));
      // Dominant axis: jnp.argmax(|d|) (the first of equal maxima), as trilinear.plane_axis.
      const T ax = std::abs(dx), ay = std::abs(dy), az = std::abs(dz);
      t->axis[m] = (ax >= ay && ax >= az) ? 0 : (ay >= az ? 1 : 2);
      const T dmax = std::max(ax, std::max(ay, az));
      t->ahead[m] = dmax > T(0) ? T(kPrefetchVoxels) / dmax : T(0);
      const double voxels_per_step = static_cast<double>(step[r]) * static_cast<double>(dmax);
      if (n > 0 && voxels_per_step > max_voxels_per_step) max_voxels_per_step = voxels_per_step;
      ++m;
    }
  }
  t->count = m;
  t->kmax = kmax;
  // Every corner prefetch covers two planes per axis (the cell and the next one): prefetching
  // every ~2 voxels of travel of the fastest ray of the tile leaves no plane out.
  t->pf_every = max_voxels_per_step > 0.0
                    ? static_cast<int>(std::clamp(kPrefetchEveryVoxels / max_voxels_per_step, 1.0, 64.0))
                    : 1;
  const int lanes = (m + 15) / 16 * 16;
  for (int i = m; i < lanes; ++i) {
    t->ray[i] = -1;
    t->ex[i] = t->ey[i] = t->ez[i] = T(0);
    t->dx[i] = t->dy[i] = t->dz[i] = T(0);
    t->h[i] = T(0);
    t->ahead[i] = T(0);
    t->n[i] = 0;
    t->axis[i] = 0;
  }
  t->lanes = lanes;
}

template <typename T>
JAXDRR_INLINE T Lerp(T a, T b, T t) {
  return a + (b - a) * t;
}

// Round half to even (jnp.round) for 0 <= x < 2^23 (float) / 2^52 (double), vectorisable.
template <typename T>
JAXDRR_INLINE T RoundEven(T x) {
  constexpr T kMagic = std::is_same<T, float>::value ? T(8388608.0) : T(4503599627370496.0);
  return (x + kMagic) - kMagic;
}

// ------------------------------------------------------------------------------------------------
// Per-sample geometry shared by the kernels, inlined into the loops over the rays of a tile.
//
// Written for GCC's vectoriser (checked with -fopt-info-vec on GCC 12): the in-support mask is a
// float 0/1 built from compare-selects, positions are clipped by compare-selects on themselves
// (NaN -> 0), integer choices are bit blends and per-ray float choices are products with 0/1.
// Anything else (a bool reused in several selects, a float select on an integer compare) makes
// GCC keep the branches and give up on the loop.

// Per-lane constants of one tile for plane sampling (the dominant axis a of each ray).
template <typename T, typename I>
struct PlaneLanes {
  int32_t sel[3][kTile];  // -1 where a == axis, else 0
  T is_i[kTile];          // 1 where a == 0
  T is_k[kTile];          // 1 where a == 2
  I sb[kTile], sc[kTile]; // element strides of the in-plane axes b, c
};

template <typename T, typename I>
JAXDRR_INLINE void MakePlaneLanes(const Tile<T>& t, I J2, I K2, I C, PlaneLanes<T, I>* p) {
  for (int r = 0; r < t.lanes; ++r) {
    const int32_t a = t.axis[r];
    for (int x = 0; x < 3; ++x) p->sel[x][r] = a == x ? -1 : 0;
    p->is_i[r] = a == 0 ? T(1) : T(0);
    p->is_k[r] = a == 2 ? T(1) : T(0);
    // trilinear._plane_corners: b = j (stride K2) for a == 0, else i; c = j for a == 2, else k.
    p->sb[r] = a == 0 ? K2 * C : J2 * K2 * C;
    p->sc[r] = a == 2 ? K2 * C : C;
  }
}

JAXDRR_INLINE int32_t Blend(int32_t sel, int32_t a, int32_t b) { return (a & sel) | (b & ~sel); }

template <typename T>
struct Bounds {
  T ux, uy, uz;         // upper = padded shape - 1 per axis
  int32_t mx, my, mz;   // upper - 1: the largest cell index
};

template <typename T>
Bounds<T> MakeBounds(const Grid& g) {
  return {T(g.I2 - 1), T(g.J2 - 1), T(g.K2 - 1), static_cast<int32_t>(g.I2 - 2),
          static_cast<int32_t>(g.J2 - 2), static_cast<int32_t>(g.K2 - 2)};
}

template <typename T>
JAXDRR_INLINE T InsideMask(T px, T py, T pz, const Bounds<T>& b, bool active) {
  T m = (px > T(0)) ? T(1) : T(0);
  m = (px < b.ux) ? m : T(0);
  m = (py > T(0)) ? m : T(0);
  m = (py < b.uy) ? m : T(0);
  m = (pz > T(0)) ? m : T(0);
  m = (pz < b.uz) ? m : T(0);
  return active ? m : T(0);
}

template <typename T>
JAXDRR_INLINE T Clip(T p, T upper) {  // jnp.clip(p, 0, upper), NaN -> 0
  p = (p > T(0)) ? p : T(0);
  return (p < upper) ? p : upper;
}

// Cell indices (clipped floor, trilinear.cell_and_fraction) of clipped positions; floor = trunc
// for p >= 0.
template <typename T>
JAXDRR_INLINE void Cells(T px, T py, T pz, const Bounds<T>& b, int32_t* ix, int32_t* iy, int32_t* iz) {
  *ix = std::min(static_cast<int32_t>(px), b.mx);
  *iy = std::min(static_cast<int32_t>(py), b.my);
  *iz = std::min(static_cast<int32_t>(pz), b.mz);
}

// Prefetches the cell corners of sample k of every ray of the tile, kPrefetchVoxels ahead (the
// rows of the 4 (i, j) corner lines: along k the pair shares a line, or the next one follows).
template <typename T, typename I, bool WRITE>
JAXDRR_INLINE void PrefetchAhead(const T* data, const Grid& g, const Tile<T>& t, int k, I* __restrict scratch) {
  const Bounds<T> bd = MakeBounds<T>(g);
  const I J2 = static_cast<I>(g.J2), K2 = static_cast<I>(g.K2), C = static_cast<I>(g.C);
  const T kh = static_cast<T>(k) + T(0.5);
  for (int r = 0; r < t.lanes; ++r) {  // vectorised
    const T s = kh * t.h[r] + t.ahead[r];
    const T qx = Clip(t.ex[r] + s * t.dx[r], bd.ux);
    const T qy = Clip(t.ey[r] + s * t.dy[r], bd.uy);
    const T qz = Clip(t.ez[r] + s * t.dz[r], bd.uz);
    int32_t ix, iy, iz;
    Cells(qx, qy, qz, bd, &ix, &iy, &iz);
    scratch[r] = ((static_cast<I>(ix) * J2 + static_cast<I>(iy)) * K2 + static_cast<I>(iz)) * C;
  }
  const I sJ = K2 * C, sI = J2 * K2 * C;
  for (int r = 0; r < t.count; ++r) {
    const T* q = data + scratch[r];
    __builtin_prefetch(q, WRITE ? 1 : 0);
    __builtin_prefetch(q + sJ, WRITE ? 1 : 0);
    __builtin_prefetch(q + sI, WRITE ? 1 : 0);
    __builtin_prefetch(q + sI + sJ, WRITE ? 1 : 0);
  }
}

// ------------------------------------------------------------------------------------------------
// Forward: acc[c][r] += f_c(sample k of ray r), for the CC channels c0 .. c0 + CC - 1.

template <typename T, typename I, int CC, bool PLANES>
JAXDRR_INLINE void ForwardTileImpl(const T* __restrict flat, const Grid& g, int c0, const Tile<T>& t,
                                   T* __restrict out) {
  alignas(64) T acc[CC][kTile];
  for (int c = 0; c < CC; ++c)
    for (int r = 0; r < kTile; ++r) acc[c][r] = T(0);
  const Bounds<T> bd = MakeBounds<T>(g);
  const I J2 = static_cast<I>(g.J2), K2 = static_cast<I>(g.K2), C = static_cast<I>(g.C);
  const I sK = C, sJ = K2 * C, sI = J2 * K2 * C;
  const T* __restrict f = flat + c0;
  const int lanes = t.lanes;
  PlaneLanes<T, I> pl;
  if constexpr (PLANES) MakePlaneLanes<T, I>(t, J2, K2, C, &pl);
  alignas(64) I scratch[kTile];
  for (int k = 0; k < t.kmax; ++k) {
    const T kh = static_cast<T>(k) + T(0.5);
    if (k % t.pf_every == 0) PrefetchAhead<T, I, false>(flat, g, t, k, scratch);
    for (int r = 0; r < lanes; ++r) {
      const T s = kh * t.h[r];
      const T px = t.ex[r] + s * t.dx[r];
      const T py = t.ey[r] + s * t.dy[r];
      const T pz = t.ez[r] + s * t.dz[r];
      const T m = InsideMask(px, py, pz, bd, k < t.n[r]);
      const T qx = Clip(px, bd.ux), qy = Clip(py, bd.uy), qz = Clip(pz, bd.uz);
      int32_t ix, iy, iz;
      Cells(qx, qy, qz, bd, &ix, &iy, &iz);
      if constexpr (PLANES) {
        // trilinear.sample_planes: the axial cell is round(p), the field bilinear in (b, c).
        ix = Blend(pl.sel[0][r], static_cast<int32_t>(RoundEven(qx)), ix);
        iy = Blend(pl.sel[1][r], static_cast<int32_t>(RoundEven(qy)), iy);
        iz = Blend(pl.sel[2][r], static_cast<int32_t>(RoundEven(qz)), iz);
        const T fx = qx - static_cast<T>(ix), fy = qy - static_cast<T>(iy), fz = qz - static_cast<T>(iz);
        const T ii = pl.is_i[r], kk = pl.is_k[r];
        const T fb = fy * ii + fx * (T(1) - ii);  // a == 0 ? fy : fx (exact)
        const T fc = fy * kk + fz * (T(1) - kk);  // a == 2 ? fy : fz
        const I sb = pl.sb[r], sc = pl.sc[r];
        const I o = ((static_cast<I>(ix) * J2 + static_cast<I>(iy)) * K2 + static_cast<I>(iz)) * C;
        for (int c = 0; c < CC; ++c) {
          const T v00 = f[o + c], v01 = f[o + c + sc], v10 = f[o + c + sb], v11 = f[o + c + sb + sc];
          const T value = Lerp(Lerp(v00, v01, fc), Lerp(v10, v11, fc), fb);
          acc[c][r] += value * m;
        }
      } else {
        const T fx = qx - static_cast<T>(ix), fy = qy - static_cast<T>(iy), fz = qz - static_cast<T>(iz);
        const I o = ((static_cast<I>(ix) * J2 + static_cast<I>(iy)) * K2 + static_cast<I>(iz)) * C;
        for (int c = 0; c < CC; ++c) {
          const I oc = o + c;
          const T v000 = f[oc], v001 = f[oc + sK], v010 = f[oc + sJ], v011 = f[oc + sJ + sK];
          const T v100 = f[oc + sI], v101 = f[oc + sI + sK], v110 = f[oc + sI + sJ], v111 = f[oc + sI + sJ + sK];
          const T y0 = Lerp(Lerp(v000, v001, fz), Lerp(v010, v011, fz), fy);
          const T y1 = Lerp(Lerp(v100, v101, fz), Lerp(v110, v111, fz), fy);
          acc[c][r] += Lerp(y0, y1, fx) * m;  // trilinear.sample: value * inside
        }
      }
    }
  }
  for (int r = 0; r < t.count; ++r)
    for (int c = 0; c < CC; ++c) out[t.ray[r] * g.C + c0 + c] = acc[c][r] * t.h[r];
}

// ------------------------------------------------------------------------------------------------
// Geometry backward: ge[a][r] += grad_a, gd[a][r] += s_k grad_a with grad the position gradient of
// sum_c cot[c][r] f_c (trilinear.sample_cotangent_gradient / sample_planes_cotangent_gradient).

template <typename T, typename I, int CC, bool PLANES>
JAXDRR_INLINE void GeometryTileImpl(const T* __restrict flat, const Grid& g, int c0, const Tile<T>& t,
                                    const T (*__restrict cot)[kTile], T (*__restrict ge)[kTile],
                                    T (*__restrict gd)[kTile]) {
  const Bounds<T> bd = MakeBounds<T>(g);
  const I J2 = static_cast<I>(g.J2), K2 = static_cast<I>(g.K2), C = static_cast<I>(g.C);
  const I sK = C, sJ = K2 * C, sI = J2 * K2 * C;
  const T* __restrict f = flat + c0;
  const int lanes = t.lanes;
  PlaneLanes<T, I> pl;
  if constexpr (PLANES) MakePlaneLanes<T, I>(t, J2, K2, C, &pl);
  alignas(64) I scratch[kTile];
  for (int k = 0; k < t.kmax; ++k) {
    const T kh = static_cast<T>(k) + T(0.5);
    if (k % t.pf_every == 0) PrefetchAhead<T, I, false>(flat, g, t, k, scratch);
    for (int r = 0; r < lanes; ++r) {
      const T s = kh * t.h[r];
      const T px = t.ex[r] + s * t.dx[r];
      const T py = t.ey[r] + s * t.dy[r];
      const T pz = t.ez[r] + s * t.dz[r];
      const T m = InsideMask(px, py, pz, bd, k < t.n[r]);
      const T qx = Clip(px, bd.ux), qy = Clip(py, bd.uy), qz = Clip(pz, bd.uz);
      int32_t ix, iy, iz;
      Cells(qx, qy, qz, bd, &ix, &iy, &iz);
      T gx, gy, gz;
      if constexpr (PLANES) {
        ix = Blend(pl.sel[0][r], static_cast<int32_t>(RoundEven(qx)), ix);
        iy = Blend(pl.sel[1][r], static_cast<int32_t>(RoundEven(qy)), iy);
        iz = Blend(pl.sel[2][r], static_cast<int32_t>(RoundEven(qz)), iz);
        const T fx = qx - static_cast<T>(ix), fy = qy - static_cast<T>(iy), fz = qz - static_cast<T>(iz);
        const T ii = pl.is_i[r], kk = pl.is_k[r];
        const T fb = fy * ii + fx * (T(1) - ii);
        const T fc = fy * kk + fz * (T(1) - kk);
        const I sb = pl.sb[r], sc = pl.sc[r];
        const I o = ((static_cast<I>(ix) * J2 + static_cast<I>(iy)) * K2 + static_cast<I>(iz)) * C;
        T w00 = T(0), w01 = T(0), w10 = T(0), w11 = T(0);
        for (int c = 0; c < CC; ++c) {
          const T w = cot[c][r];
          w00 += f[o + c] * w;
          w01 += f[o + c + sc] * w;
          w10 += f[o + c + sb] * w;
          w11 += f[o + c + sb + sc] * w;
        }
        const T d_c = Lerp(w01 - w00, w11 - w10, fb);
        const T d_b = Lerp(w10 - w00, w11 - w01, fc);
        // One-hot placement (trilinear.sample_planes_cotangent_gradient): (0, d_b, d_c) for a == 0,
        // (d_b, 0, d_c) for a == 1, (d_b, d_c, 0) for a == 2.
        gx = d_b * (T(1) - ii);
        gy = d_b * ii + d_c * kk;
        gz = d_c * (T(1) - kk);
      } else {
        const T fx = qx - static_cast<T>(ix), fy = qy - static_cast<T>(iy), fz = qz - static_cast<T>(iz);
        const I o = ((static_cast<I>(ix) * J2 + static_cast<I>(iy)) * K2 + static_cast<I>(iz)) * C;
        T w000 = T(0), w001 = T(0), w010 = T(0), w011 = T(0), w100 = T(0), w101 = T(0), w110 = T(0),
          w111 = T(0);
        for (int c = 0; c < CC; ++c) {
          const I oc = o + c;
          const T w = cot[c][r];
          w000 += f[oc] * w;
          w001 += f[oc + sK] * w;
          w010 += f[oc + sJ] * w;
          w011 += f[oc + sJ + sK] * w;
          w100 += f[oc + sI] * w;
          w101 += f[oc + sI + sK] * w;
          w110 += f[oc + sI + sJ] * w;
          w111 += f[oc + sI + sJ + sK] * w;
        }
        // trilinear.interpolate_gradient
        const T z00 = Lerp(w000, w001, fz), z01 = Lerp(w010, w011, fz);
        const T z10 = Lerp(w100, w101, fz), z11 = Lerp(w110, w111, fz);
        const T y0 = Lerp(z00, z01, fy), y1 = Lerp(z10, z11, fy);
        const T dzy0 = Lerp(w001 - w000, w011 - w010, fy);
        const T dzy1 = Lerp(w101 - w100, w111 - w110, fy);
        gx = y1 - y0;
        gy = Lerp(z01 - z00, z11 - z10, fx);
        gz = Lerp(dzy0, dzy1, fx);
      }
      gx *= m;
      gy *= m;
      gz *= m;
      ge[0][r] += gx;
      ge[1][r] += gy;
      ge[2][r] += gz;
      gd[0][r] += s * gx;
      gd[1][r] += s * gy;
      gd[2][r] += s * gz;
    }
  }
}
// ------------------------------------------------------------------------------------------------
// Instantiation and ISA dispatch

template <typename T>
using ForwardFn = void (*)(const T*, const Grid&, int, const Tile<T>&, T*);
template <typename T>
using GeometryFn = void (*)(const T*, const Grid&, int, const Tile<T>&, const T (*)[kTile], T (*)[kTile],
                            T (*)[kTile]);

template <typename T, typename I, int CC, bool PLANES>
void ForwardTileBase(const T* flat, const Grid& g, int c0, const Tile<T>& t, T* out) {
  ForwardTileImpl<T, I, CC, PLANES>(flat, g, c0, t, out);
}
template <typename T, typename I, int CC, bool PLANES>
void GeometryTileBase(const T* flat, const Grid& g, int c0, const Tile<T>& t, const T (*cot)[kTile],
                      T (*ge)[kTile], T (*gd)[kTile]) {
  GeometryTileImpl<T, I, CC, PLANES>(flat, g, c0, t, cot, ge, gd);
}

#if JAXDRR_X86
template <typename T, typename I, int CC, bool PLANES>
JAXDRR_AVX2 void ForwardTileAvx2(const T* flat, const Grid& g, int c0, const Tile<T>& t, T* out) {
  ForwardTileImpl<T, I, CC, PLANES>(flat, g, c0, t, out);
}
template <typename T, typename I, int CC, bool PLANES>
JAXDRR_AVX2 void GeometryTileAvx2(const T* flat, const Grid& g, int c0, const Tile<T>& t,
                                  const T (*cot)[kTile], T (*ge)[kTile], T (*gd)[kTile]) {
  GeometryTileImpl<T, I, CC, PLANES>(flat, g, c0, t, cot, ge, gd);
}

// Forward for 2-4 channels (float32, AVX2): the channels of a corner are contiguous, so each
// corner is one 4-lane load (masked: no read past the volume) instead of CC gathers, and the
// interpolation runs across the channels. The positions and cells are computed across the rays
// of the tile first (the loop of ForwardTileImpl), then the rays are interpolated one by one.
JAXDRR_AVX2 inline __m128 Lerp4(__m128 a, __m128 b, __m128 w) {
  return _mm_add_ps(a, _mm_mul_ps(_mm_sub_ps(b, a), w));
}

template <int CC, bool PLANES>
JAXDRR_AVX2 void ForwardTileChannelsAvx2(const float* flat, const Grid& g, int c0, const Tile<float>& t,
                                         float* out) {
  static_assert(CC >= 2 && CC <= 4, "2 to 4 channels");
  using I = int32_t;
  const Bounds<float> bd = MakeBounds<float>(g);
  const I J2 = static_cast<I>(g.J2), K2 = static_cast<I>(g.K2), C = static_cast<I>(g.C);
  const I sK = C, sJ = K2 * C, sI = J2 * K2 * C;
  const float* __restrict f = flat + c0;
  const int lanes = t.lanes;
  PlaneLanes<float, I> pl;
  if constexpr (PLANES) MakePlaneLanes<float, I>(t, J2, K2, C, &pl);
  alignas(64) I scratch[kTile], off[kTile];
  alignas(64) float wx[kTile], wy[kTile], wz[kTile], wm[kTile];
  alignas(64) float acc[kTile][4];
  for (int r = 0; r < kTile; ++r) _mm_store_ps(acc[r], _mm_setzero_ps());
  const __m128i keep = _mm_setr_epi32(-1, -1, CC > 2 ? -1 : 0, CC > 3 ? -1 : 0);
  for (int k = 0; k < t.kmax; ++k) {
    const float kh = static_cast<float>(k) + 0.5f;
    if (k % t.pf_every == 0) PrefetchAhead<float, I, false>(flat, g, t, k, scratch);
    for (int r = 0; r < lanes; ++r) {  // vectorised across rays
      const float s = kh * t.h[r];
      const float px = t.ex[r] + s * t.dx[r];
      const float py = t.ey[r] + s * t.dy[r];
      const float pz = t.ez[r] + s * t.dz[r];
      wm[r] = InsideMask(px, py, pz, bd, k < t.n[r]);
      const float qx = Clip(px, bd.ux), qy = Clip(py, bd.uy), qz = Clip(pz, bd.uz);
      int32_t ix, iy, iz;
      Cells(qx, qy, qz, bd, &ix, &iy, &iz);
      if constexpr (PLANES) {
        ix = Blend(pl.sel[0][r], static_cast<int32_t>(RoundEven(qx)), ix);
        iy = Blend(pl.sel[1][r], static_cast<int32_t>(RoundEven(qy)), iy);
        iz = Blend(pl.sel[2][r], static_cast<int32_t>(RoundEven(qz)), iz);
        const float fx = qx - static_cast<float>(ix), fy = qy - static_cast<float>(iy),
                    fz = qz - static_cast<float>(iz);
        const float ii = pl.is_i[r], kk = pl.is_k[r];
        wx[r] = fy * ii + fx * (1.f - ii);  // fb
        wy[r] = fy * kk + fz * (1.f - kk);  // fc
      } else {
        wx[r] = qx - static_cast<float>(ix);
        wy[r] = qy - static_cast<float>(iy);
        wz[r] = qz - static_cast<float>(iz);
      }
      off[r] = ((ix * J2 + iy) * K2 + iz) * C;
    }
    for (int r = 0; r < t.count; ++r) {  // one ray at a time, channels across the lanes
      const float* p = f + off[r];
      __m128 value;
      if constexpr (PLANES) {
        const I sb = pl.sb[r], sc = pl.sc[r];
        const __m128 fb = _mm_set1_ps(wx[r]), fc = _mm_set1_ps(wy[r]);
        const __m128 v00 = _mm_maskload_ps(p, keep), v01 = _mm_maskload_ps(p + sc, keep);
        const __m128 v10 = _mm_maskload_ps(p + sb, keep), v11 = _mm_maskload_ps(p + sb + sc, keep);
        value = Lerp4(Lerp4(v00, v01, fc), Lerp4(v10, v11, fc), fb);
      } else {
        const __m128 fx = _mm_set1_ps(wx[r]), fy = _mm_set1_ps(wy[r]), fz = _mm_set1_ps(wz[r]);
        const __m128 v000 = _mm_maskload_ps(p, keep), v001 = _mm_maskload_ps(p + sK, keep);
        const __m128 v010 = _mm_maskload_ps(p + sJ, keep), v011 = _mm_maskload_ps(p + sJ + sK, keep);
        const __m128 v100 = _mm_maskload_ps(p + sI, keep), v101 = _mm_maskload_ps(p + sI + sK, keep);
        const __m128 v110 = _mm_maskload_ps(p + sI + sJ, keep);
        const __m128 v111 = _mm_maskload_ps(p + sI + sJ + sK, keep);
        const __m128 y0 = Lerp4(Lerp4(v000, v001, fz), Lerp4(v010, v011, fz), fy);
        const __m128 y1 = Lerp4(Lerp4(v100, v101, fz), Lerp4(v110, v111, fz), fy);
        value = Lerp4(y0, y1, fx);
      }
      _mm_store_ps(acc[r], _mm_add_ps(_mm_load_ps(acc[r]), _mm_mul_ps(value, _mm_set1_ps(wm[r]))));
    }
  }
  for (int r = 0; r < t.count; ++r)
    for (int c = 0; c < CC; ++c) out[t.ray[r] * g.C + c0 + c] = acc[r][c] * t.h[r];
}

// Geometry backward for 2-4 channels (float32, AVX2), the counterpart of ForwardTileChannelsAvx2:
// the position gradient is linear in the corner values and the cotangent is constant along a ray,
// so the per-channel gradients are summed over the samples (channels across the lanes) and
// contracted with the cotangent once per ray at the end.
JAXDRR_AVX2 inline float Dot4(__m128 a, __m128 b) {
  const __m128 p = _mm_mul_ps(a, b);
  const __m128 q = _mm_add_ps(p, _mm_movehl_ps(p, p));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

template <int CC, bool PLANES>
JAXDRR_AVX2 void GeometryTileChannelsAvx2(const float* flat, const Grid& g, int c0, const Tile<float>& t,
                                          const float (*cot)[kTile], float (*ge)[kTile], float (*gd)[kTile]) {
  static_assert(CC >= 2 && CC <= 4, "2 to 4 channels");
  using I = int32_t;
  const Bounds<float> bd = MakeBounds<float>(g);
  const I J2 = static_cast<I>(g.J2), K2 = static_cast<I>(g.K2), C = static_cast<I>(g.C);
  const I sK = C, sJ = K2 * C, sI = J2 * K2 * C;
  const float* __restrict f = flat + c0;
  const int lanes = t.lanes;
  PlaneLanes<float, I> pl;
  if constexpr (PLANES) MakePlaneLanes<float, I>(t, J2, K2, C, &pl);
  alignas(64) I scratch[kTile], off[kTile];
  alignas(64) float wx[kTile], wy[kTile], wz[kTile], wm[kTile], ws[kTile];
  // Per ray and channel: sums over samples of the gradient (3 axes; planes: d_b, d_c) for
  // g_entry and of s times it for g_direction.
  constexpr int A = PLANES ? 2 : 3;
  alignas(64) float acc_e[A][kTile][4], acc_d[A][kTile][4];
  for (int a = 0; a < A; ++a) {
    for (int r = 0; r < kTile; ++r) {
      _mm_store_ps(acc_e[a][r], _mm_setzero_ps());
      _mm_store_ps(acc_d[a][r], _mm_setzero_ps());
    }
  }
  const __m128i keep = _mm_setr_epi32(-1, -1, CC > 2 ? -1 : 0, CC > 3 ? -1 : 0);
  for (int k = 0; k < t.kmax; ++k) {
    const float kh = static_cast<float>(k) + 0.5f;
    if (k % t.pf_every == 0) PrefetchAhead<float, I, false>(flat, g, t, k, scratch);
    for (int r = 0; r < lanes; ++r) {  // vectorised across rays
      const float s = kh * t.h[r];
      const float px = t.ex[r] + s * t.dx[r];
      const float py = t.ey[r] + s * t.dy[r];
      const float pz = t.ez[r] + s * t.dz[r];
      wm[r] = InsideMask(px, py, pz, bd, k < t.n[r]);
      ws[r] = s;
      const float qx = Clip(px, bd.ux), qy = Clip(py, bd.uy), qz = Clip(pz, bd.uz);
      int32_t ix, iy, iz;
      Cells(qx, qy, qz, bd, &ix, &iy, &iz);
      if constexpr (PLANES) {
        ix = Blend(pl.sel[0][r], static_cast<int32_t>(RoundEven(qx)), ix);
        iy = Blend(pl.sel[1][r], static_cast<int32_t>(RoundEven(qy)), iy);
        iz = Blend(pl.sel[2][r], static_cast<int32_t>(RoundEven(qz)), iz);
        const float fx = qx - static_cast<float>(ix), fy = qy - static_cast<float>(iy),
                    fz = qz - static_cast<float>(iz);
        const float ii = pl.is_i[r], kk = pl.is_k[r];
        wx[r] = fy * ii + fx * (1.f - ii);  // fb
        wy[r] = fy * kk + fz * (1.f - kk);  // fc
      } else {
        wx[r] = qx - static_cast<float>(ix);
        wy[r] = qy - static_cast<float>(iy);
        wz[r] = qz - static_cast<float>(iz);
      }
      off[r] = ((ix * J2 + iy) * K2 + iz) * C;
    }
    for (int r = 0; r < t.count; ++r) {
      if (wm[r] == 0.f) continue;
      const float* p = f + off[r];
      const __m128 s = _mm_set1_ps(ws[r]);
      if constexpr (PLANES) {
        const I sb = pl.sb[r], sc = pl.sc[r];
        const __m128 fb = _mm_set1_ps(wx[r]), fc = _mm_set1_ps(wy[r]);
        const __m128 v00 = _mm_maskload_ps(p, keep), v01 = _mm_maskload_ps(p + sc, keep);
        const __m128 v10 = _mm_maskload_ps(p + sb, keep), v11 = _mm_maskload_ps(p + sb + sc, keep);
        const __m128 d_c = Lerp4(_mm_sub_ps(v01, v00), _mm_sub_ps(v11, v10), fb);
        const __m128 d_b = Lerp4(_mm_sub_ps(v10, v00), _mm_sub_ps(v11, v01), fc);
        const __m128 gr[2] = {d_b, d_c};
        for (int a = 0; a < 2; ++a) {
          _mm_store_ps(acc_e[a][r], _mm_add_ps(_mm_load_ps(acc_e[a][r]), gr[a]));
          _mm_store_ps(acc_d[a][r], _mm_add_ps(_mm_load_ps(acc_d[a][r]), _mm_mul_ps(s, gr[a])));
        }
      } else {
        const __m128 fx = _mm_set1_ps(wx[r]), fy = _mm_set1_ps(wy[r]), fz = _mm_set1_ps(wz[r]);
        const __m128 v000 = _mm_maskload_ps(p, keep), v001 = _mm_maskload_ps(p + sK, keep);
        const __m128 v010 = _mm_maskload_ps(p + sJ, keep), v011 = _mm_maskload_ps(p + sJ + sK, keep);
        const __m128 v100 = _mm_maskload_ps(p + sI, keep), v101 = _mm_maskload_ps(p + sI + sK, keep);
        const __m128 v110 = _mm_maskload_ps(p + sI + sJ, keep);
        const __m128 v111 = _mm_maskload_ps(p + sI + sJ + sK, keep);
        // trilinear.interpolate_gradient, per channel
        const __m128 z00 = Lerp4(v000, v001, fz), z01 = Lerp4(v010, v011, fz);
        const __m128 z10 = Lerp4(v100, v101, fz), z11 = Lerp4(v110, v111, fz);
        const __m128 y0 = Lerp4(z00, z01, fy), y1 = Lerp4(z10, z11, fy);
        const __m128 dzy0 = Lerp4(_mm_sub_ps(v001, v000), _mm_sub_ps(v011, v010), fy);
        const __m128 dzy1 = Lerp4(_mm_sub_ps(v101, v100), _mm_sub_ps(v111, v110), fy);
        const __m128 gr[3] = {_mm_sub_ps(y1, y0), Lerp4(_mm_sub_ps(z01, z00), _mm_sub_ps(z11, z10), fx),
                              Lerp4(dzy0, dzy1, fx)};
        for (int a = 0; a < 3; ++a) {
          _mm_store_ps(acc_e[a][r], _mm_add_ps(_mm_load_ps(acc_e[a][r]), gr[a]));
          _mm_store_ps(acc_d[a][r], _mm_add_ps(_mm_load_ps(acc_d[a][r]), _mm_mul_ps(s, gr[a])));
        }
      }
    }
  }
  for (int r = 0; r < t.count; ++r) {
    alignas(16) float cv[4] = {0.f, 0.f, 0.f, 0.f};
    for (int c = 0; c < CC; ++c) cv[c] = cot[c][r];
    const __m128 w = _mm_load_ps(cv);
    if constexpr (PLANES) {
      const float ii = pl.is_i[r], kk = pl.is_k[r];
      const float eb = Dot4(_mm_load_ps(acc_e[0][r]), w), ec = Dot4(_mm_load_ps(acc_e[1][r]), w);
      const float db = Dot4(_mm_load_ps(acc_d[0][r]), w), dc = Dot4(_mm_load_ps(acc_d[1][r]), w);
      // (0, d_b, d_c) for a == 0, (d_b, 0, d_c) for a == 1, (d_b, d_c, 0) for a == 2
      ge[0][r] += eb * (1.f - ii);
      ge[1][r] += eb * ii + ec * kk;
      ge[2][r] += ec * (1.f - kk);
      gd[0][r] += db * (1.f - ii);
      gd[1][r] += db * ii + dc * kk;
      gd[2][r] += dc * (1.f - kk);
    } else {
      for (int a = 0; a < 3; ++a) {
        ge[a][r] += Dot4(_mm_load_ps(acc_e[a][r]), w);
        gd[a][r] += Dot4(_mm_load_ps(acc_d[a][r]), w);
      }
    }
  }
}

// One channel, uniform steps (float32, AVX2): corners (k, k + 1) are adjacent floats, so each pair
// is one 64-bit gather element, half the elements of 8 float gathers. Same math and order as
// ForwardTileImpl / GeometryTileImpl; 8 rays per vector.
struct Cell8 {
  __m256 m, fx, fy, fz, s;  // mask 0/1, fractions, sample distance
  __m256 v[8];              // corners 000 .. 111
};

JAXDRR_AVX2 inline __m256 Lerp8(__m256 a, __m256 b, __m256 w) {
  return _mm256_add_ps(a, _mm256_mul_ps(_mm256_sub_ps(b, a), w));
}

JAXDRR_AVX2 inline void Pair8(const long long* base, __m128i oa, __m128i ob, int off, __m256* lo, __m256* hi) {
  // oa, ob: offsets of rays (0, 1, 4, 5) and (2, 3, 6, 7): the shuffles restore the ray order.
  const __m128i da = _mm_add_epi32(oa, _mm_set1_epi32(off)), db = _mm_add_epi32(ob, _mm_set1_epi32(off));
  const __m256 a = _mm256_castsi256_ps(_mm256_i32gather_epi64(base, da, 4));
  const __m256 b = _mm256_castsi256_ps(_mm256_i32gather_epi64(base, db, 4));
  *lo = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  *hi = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}

JAXDRR_AVX2 inline void Locate8(const float* flat, const Grid& g, const Tile<float>& t, int k, int r, Cell8* q) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 ux = _mm256_set1_ps(static_cast<float>(g.I2 - 1)), uy = _mm256_set1_ps(static_cast<float>(g.J2 - 1)),
               uz = _mm256_set1_ps(static_cast<float>(g.K2 - 1));
  const __m256 h = _mm256_load_ps(t.h + r);
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(k) + 0.5f), h);
  const __m256 px = _mm256_add_ps(_mm256_load_ps(t.ex + r), _mm256_mul_ps(s, _mm256_load_ps(t.dx + r)));
  const __m256 py = _mm256_add_ps(_mm256_load_ps(t.ey + r), _mm256_mul_ps(s, _mm256_load_ps(t.dy + r)));
  const __m256 pz = _mm256_add_ps(_mm256_load_ps(t.ez + r), _mm256_mul_ps(s, _mm256_load_ps(t.dz + r)));
  __m256 in = _mm256_and_ps(_mm256_cmp_ps(px, zero, _CMP_GT_OQ), _mm256_cmp_ps(px, ux, _CMP_LT_OQ));
  in = _mm256_and_ps(in, _mm256_and_ps(_mm256_cmp_ps(py, zero, _CMP_GT_OQ), _mm256_cmp_ps(py, uy, _CMP_LT_OQ)));
  in = _mm256_and_ps(in, _mm256_and_ps(_mm256_cmp_ps(pz, zero, _CMP_GT_OQ), _mm256_cmp_ps(pz, uz, _CMP_LT_OQ)));
  const __m256i active = _mm256_cmpgt_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(t.n + r)),
                                            _mm256_set1_epi32(k));
  q->m = _mm256_and_ps(_mm256_and_ps(in, _mm256_castsi256_ps(active)), _mm256_set1_ps(1.f));
  q->s = s;
  // Clip (max_ps(p, 0) maps NaN to 0), cells, fractions.
  const __m256 qx = _mm256_min_ps(_mm256_max_ps(px, zero), ux);
  const __m256 qy = _mm256_min_ps(_mm256_max_ps(py, zero), uy);
  const __m256 qz = _mm256_min_ps(_mm256_max_ps(pz, zero), uz);
  const __m256i ix = _mm256_min_epi32(_mm256_cvttps_epi32(qx), _mm256_set1_epi32(static_cast<int>(g.I2 - 2)));
  const __m256i iy = _mm256_min_epi32(_mm256_cvttps_epi32(qy), _mm256_set1_epi32(static_cast<int>(g.J2 - 2)));
  const __m256i iz = _mm256_min_epi32(_mm256_cvttps_epi32(qz), _mm256_set1_epi32(static_cast<int>(g.K2 - 2)));
  q->fx = _mm256_sub_ps(qx, _mm256_cvtepi32_ps(ix));
  q->fy = _mm256_sub_ps(qy, _mm256_cvtepi32_ps(iy));
  q->fz = _mm256_sub_ps(qz, _mm256_cvtepi32_ps(iz));
  const __m256i cell = _mm256_add_epi32(
      _mm256_mullo_epi32(_mm256_add_epi32(_mm256_mullo_epi32(ix, _mm256_set1_epi32(static_cast<int>(g.J2))), iy),
                         _mm256_set1_epi32(static_cast<int>(g.K2))),
      iz);
  const __m256i o = _mm256_permutevar8x32_epi32(cell, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
  const __m128i oa = _mm256_castsi256_si128(o), ob = _mm256_extracti128_si256(o, 1);
  const long long* base = reinterpret_cast<const long long*>(flat);
  const int sJ = static_cast<int>(g.K2), sI = static_cast<int>(g.J2 * g.K2);
  Pair8(base, oa, ob, 0, &q->v[0], &q->v[1]);
  Pair8(base, oa, ob, sJ, &q->v[2], &q->v[3]);
  Pair8(base, oa, ob, sI, &q->v[4], &q->v[5]);
  Pair8(base, oa, ob, sI + sJ, &q->v[6], &q->v[7]);
}

JAXDRR_AVX2 void ForwardTileOneAvx2(const float* flat, const Grid& g, int c0, const Tile<float>& t, float* out) {
  (void)c0;  // one channel: c0 = 0
  alignas(64) float acc[kTile];
  alignas(64) int32_t scratch[kTile];
  for (int r = 0; r < kTile; ++r) acc[r] = 0.f;
  for (int k = 0; k < t.kmax; ++k) {
    if (k % t.pf_every == 0) PrefetchAhead<float, int32_t, false>(flat, g, t, k, scratch);
    for (int r = 0; r < t.lanes; r += 8) {
      Cell8 q;
      Locate8(flat, g, t, k, r, &q);
      const __m256 y0 = Lerp8(Lerp8(q.v[0], q.v[1], q.fz), Lerp8(q.v[2], q.v[3], q.fz), q.fy);
      const __m256 y1 = Lerp8(Lerp8(q.v[4], q.v[5], q.fz), Lerp8(q.v[6], q.v[7], q.fz), q.fy);
      const __m256 value = Lerp8(y0, y1, q.fx);
      _mm256_store_ps(acc + r, _mm256_add_ps(_mm256_load_ps(acc + r), _mm256_mul_ps(value, q.m)));
    }
  }
  for (int r = 0; r < t.count; ++r) out[t.ray[r]] = acc[r] * t.h[r];
}

JAXDRR_AVX2 void GeometryTileOneAvx2(const float* flat, const Grid& g, int c0, const Tile<float>& t,
                                     const float (*cot)[kTile], float (*ge)[kTile], float (*gd)[kTile]) {
  (void)c0;
  alignas(64) int32_t scratch[kTile];
  for (int k = 0; k < t.kmax; ++k) {
    if (k % t.pf_every == 0) PrefetchAhead<float, int32_t, false>(flat, g, t, k, scratch);
    for (int r = 0; r < t.lanes; r += 8) {
      Cell8 q;
      Locate8(flat, g, t, k, r, &q);
      const __m256 w = _mm256_load_ps(cot[0] + r);
      __m256 v[8];
      for (int c = 0; c < 8; ++c) v[c] = _mm256_mul_ps(q.v[c], w);
      // trilinear.interpolate_gradient
      const __m256 z00 = Lerp8(v[0], v[1], q.fz), z01 = Lerp8(v[2], v[3], q.fz);
      const __m256 z10 = Lerp8(v[4], v[5], q.fz), z11 = Lerp8(v[6], v[7], q.fz);
      const __m256 y0 = Lerp8(z00, z01, q.fy), y1 = Lerp8(z10, z11, q.fy);
      const __m256 dzy0 = Lerp8(_mm256_sub_ps(v[1], v[0]), _mm256_sub_ps(v[3], v[2]), q.fy);
      const __m256 dzy1 = Lerp8(_mm256_sub_ps(v[5], v[4]), _mm256_sub_ps(v[7], v[6]), q.fy);
      const __m256 gr[3] = {_mm256_mul_ps(_mm256_sub_ps(y1, y0), q.m),
                            _mm256_mul_ps(Lerp8(_mm256_sub_ps(z01, z00), _mm256_sub_ps(z11, z10), q.fx), q.m),
                            _mm256_mul_ps(Lerp8(dzy0, dzy1, q.fx), q.m)};
      for (int a = 0; a < 3; ++a) {
        _mm256_store_ps(ge[a] + r, _mm256_add_ps(_mm256_load_ps(ge[a] + r), gr[a]));
        _mm256_store_ps(gd[a] + r, _mm256_add_ps(_mm256_load_ps(gd[a] + r), _mm256_mul_ps(q.s, gr[a])));
      }
    }
  }
}

bool HasAvx2() {
  static const bool has = [] {
    if (const char* env = std::getenv("JAXDRR_CPU_NO_AVX2")) {
      if (env[0] != '\0' && env[0] != '0') return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#else
bool HasAvx2() { return false; }
#endif

template <typename T, typename I, bool PLANES>
ForwardFn<T> PickForward(int cc, int64_t total_channels) {
#if JAXDRR_X86
  // The AVX2 build: float32 with 32-bit indices (gathers of 8 lanes); float64 and huge volumes
  // use the portable build.
  if constexpr (std::is_same<T, float>::value && std::is_same<I, int32_t>::value) {
    if (HasAvx2()) {
      static const bool gather = std::getenv("JAXDRR_CPU_GATHER_CHANNELS") != nullptr;  // (for tests)
      switch (cc) {
        case 1:  // one channel in all (adjacent corners along k): pair gathers
          if (!PLANES && total_channels == 1 && !gather) return ForwardTileOneAvx2;
          return ForwardTileAvx2<T, I, 1, PLANES>;
        case 2: return gather ? ForwardTileAvx2<T, I, 2, PLANES> : ForwardTileChannelsAvx2<2, PLANES>;
        case 3: return gather ? ForwardTileAvx2<T, I, 3, PLANES> : ForwardTileChannelsAvx2<3, PLANES>;
        default: return gather ? ForwardTileAvx2<T, I, 4, PLANES> : ForwardTileChannelsAvx2<4, PLANES>;
      }
    }
  }
#endif
  switch (cc) {
    case 1: return ForwardTileBase<T, I, 1, PLANES>;
    case 2: return ForwardTileBase<T, I, 2, PLANES>;
    case 3: return ForwardTileBase<T, I, 3, PLANES>;
    default: return ForwardTileBase<T, I, 4, PLANES>;
  }
}

template <typename T, typename I, bool PLANES>
GeometryFn<T> PickGeometry(int cc, int64_t total_channels) {
#if JAXDRR_X86
  if constexpr (std::is_same<T, float>::value && std::is_same<I, int32_t>::value) {
    if (HasAvx2()) {
      static const bool gather = std::getenv("JAXDRR_CPU_GATHER_CHANNELS") != nullptr;  // (for tests)
      switch (cc) {
        case 1:
          if (!PLANES && total_channels == 1 && !gather) return GeometryTileOneAvx2;
          return GeometryTileAvx2<T, I, 1, PLANES>;
        case 2: return gather ? GeometryTileAvx2<T, I, 2, PLANES> : GeometryTileChannelsAvx2<2, PLANES>;
        case 3: return gather ? GeometryTileAvx2<T, I, 3, PLANES> : GeometryTileChannelsAvx2<3, PLANES>;
        default: return gather ? GeometryTileAvx2<T, I, 4, PLANES> : GeometryTileChannelsAvx2<4, PLANES>;
      }
    }
  }
#endif
  switch (cc) {
    case 1: return GeometryTileBase<T, I, 1, PLANES>;
    case 2: return GeometryTileBase<T, I, 2, PLANES>;
    case 3: return GeometryTileBase<T, I, 3, PLANES>;
    default: return GeometryTileBase<T, I, 4, PLANES>;
  }
}

// Kernel tables for channel groups c0 = 0, 4, 8, ... (4 channels each, the last one the rest).
template <typename T, typename Fn, typename Pick>
void GroupKernels(int64_t C, Fn* fns, const Pick& pick) {
  for (int64_t c0 = 0, i = 0; c0 < C; c0 += kGroup, ++i) {
    fns[i] = pick(static_cast<int>(std::min<int64_t>(kGroup, C - c0)));
  }
}

// 64-bit element offsets (the portable kernels) for volumes of 2^31 or more elements, e.g. 512^3 with
// 16 channels. JAXDRR_CPU_WIDE_INDEX=1 forces them on any volume (for tests).
bool NeedsWideIndex(const Grid& g) {
  static const bool force = [] {
    const char* env = std::getenv("JAXDRR_CPU_WIDE_INDEX");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return force || g.I2 * g.J2 * g.K2 * g.C >= (int64_t{1} << 31) - 1;
}

// ------------------------------------------------------------------------------------------------
// Drivers

template <typename T>
struct Rays {
  const T* entry;
  const T* direction;
  const T* step;
  const int32_t* num_steps;
  Operand o_entry, o_direction, o_step, o_num_steps;
};

template <typename T>
void Forward(const Grid& g, const Batch& b, const T* flat, const Operand& o_flat, const Rays<T>& rays,
             int64_t num_rays, int64_t width, T* out) {
  const Tiling tl = Tiling::Make(num_rays, width);
  const int64_t tiles = tl.count();
  const int64_t groups = (g.C + kGroup - 1) / kGroup;
  std::vector<ForwardFn<T>> fns(static_cast<size_t>(groups));
  const bool wide = NeedsWideIndex(g);
  auto pick = [&](int cc) -> ForwardFn<T> {
    if (wide) return g.planes ? PickForward<T, int64_t, true>(cc, g.C) : PickForward<T, int64_t, false>(cc, g.C);
    return g.planes ? PickForward<T, int32_t, true>(cc, g.C) : PickForward<T, int32_t, false>(cc, g.C);
  };
  GroupKernels<T>(g.C, fns.data(), pick);
  ParallelFor(b.count * tiles, NumThreads(), [&](int64_t item) {
    const int64_t bi = item / tiles, tile = item % tiles;
    Tile<T> t;
    LoadTile(tl, tile, rays.entry + Offset(b, rays.o_entry, bi), rays.direction + Offset(b, rays.o_direction, bi),
             rays.step + Offset(b, rays.o_step, bi), rays.num_steps + Offset(b, rays.o_num_steps, bi), &t);
    const T* f = flat + Offset(b, o_flat, bi);
    T* o = out + bi * num_rays * g.C;
    for (int64_t c0 = 0, i = 0; c0 < g.C; c0 += kGroup, ++i) fns[static_cast<size_t>(i)](f, g, static_cast<int>(c0), t, o);
  });
}

template <typename T>
void GeometryBackward(const Grid& g, const Batch& b, const T* flat, const Operand& o_flat, const Rays<T>& rays,
                      const T* cot, const Operand& o_cot, int64_t num_rays, int64_t width, T* g_entry,
                      T* g_direction) {
  const Tiling tl = Tiling::Make(num_rays, width);
  const int64_t tiles = tl.count();
  const int64_t groups = (g.C + kGroup - 1) / kGroup;
  std::vector<GeometryFn<T>> fns(static_cast<size_t>(groups));
  const bool wide = NeedsWideIndex(g);
  auto pick = [&](int cc) -> GeometryFn<T> {
    if (wide) return g.planes ? PickGeometry<T, int64_t, true>(cc, g.C) : PickGeometry<T, int64_t, false>(cc, g.C);
    return g.planes ? PickGeometry<T, int32_t, true>(cc, g.C) : PickGeometry<T, int32_t, false>(cc, g.C);
  };
  GroupKernels<T>(g.C, fns.data(), pick);
  ParallelFor(b.count * tiles, NumThreads(), [&](int64_t item) {
    const int64_t bi = item / tiles, tile = item % tiles;
    Tile<T> t;
    LoadTile(tl, tile, rays.entry + Offset(b, rays.o_entry, bi), rays.direction + Offset(b, rays.o_direction, bi),
             rays.step + Offset(b, rays.o_step, bi), rays.num_steps + Offset(b, rays.o_num_steps, bi), &t);
    const T* f = flat + Offset(b, o_flat, bi);
    const T* gc = cot + Offset(b, o_cot, bi);
    alignas(64) T ge[3][kTile], gd[3][kTile], cg[kGroup][kTile];
    for (int a = 0; a < 3; ++a) {
      for (int r = 0; r < kTile; ++r) ge[a][r] = gd[a][r] = T(0);
    }
    for (int64_t c0 = 0, i = 0; c0 < g.C; c0 += kGroup, ++i) {
      const int cc = static_cast<int>(std::min<int64_t>(kGroup, g.C - c0));
      for (int c = 0; c < kGroup; ++c) {
        for (int r = 0; r < t.lanes; ++r) {
          // g_step = g * step (march._chunk_backward); padding lanes and channels get 0.
          cg[c][r] = (c < cc && r < t.count) ? gc[t.ray[r] * g.C + c0 + c] * t.h[r] : T(0);
        }
      }
      fns[static_cast<size_t>(i)](f, g, static_cast<int>(c0), t, cg, ge, gd);
    }
    T* oe = g_entry + bi * num_rays * 3;
    T* od = g_direction + bi * num_rays * 3;
    for (int r = 0; r < t.count; ++r) {
      for (int a = 0; a < 3; ++a) {
        oe[t.ray[r] * 3 + a] = ge[a][r];
        od[t.ray[r] * 3 + a] = gd[a][r];
      }
    }
  });
}

// Volume backward over one slab of i-planes [i0, i1) of one batch element: zero it, then add the
// contributions of every sample whose cell touches it, in a fixed order: tile by tile, sample k by
// sample k (the rays of a tile in lockstep, which keeps the written region compact), ray by ray
// within the tile. Every voxel receives its contributions in that order whatever the slab
// boundaries, so the result is independent of the slab and thread counts.
template <typename T, int CC, bool PLANES>  // CC: channels (0: any, read at run time)
void VolumeSlab(const Grid& g, const Tiling& tl, int64_t i0, int64_t i1, const T* entry, const T* direction,
                const T* step, const int32_t* num_steps, const T* cot, T* gflat) {
  const int64_t plane = g.J2 * g.K2 * g.C;
  std::fill(gflat + i0 * plane, gflat + i1 * plane, T(0));
  const Bounds<T> bd = MakeBounds<T>(g);
  const int64_t J2 = g.J2, K2 = g.K2, C = g.C;
  const int64_t sK = C, sJ = K2 * C, sI = J2 * K2 * C;
  // Candidate samples: those whose cell along i may touch the slab, i.e. position along i in
  // [i0 - 1.5, i1) (floor, or round on a plane), widened by half a voxel (far more than float
  // rounding) and by one sample on each side; each candidate is then located exactly and skipped
  // if its corners miss the slab.
  const double lo = static_cast<double>(i0) - 2.0, hi = static_cast<double>(i1) + 0.5;
  Tile<T> t;
  PlaneLanes<T, int64_t> pl;
  alignas(64) int32_t k0[kTile], k1[kTile], cx[kTile], cy[kTile], cz[kTile];
  alignas(64) T fx[kTile], fy[kTile], fz[kTile], mask[kTile];
  alignas(64) int64_t scratch[kTile];
  for (int64_t tile = 0; tile < tl.count(); ++tile) {
    LoadTile(tl, tile, entry, direction, step, num_steps, &t);
    int kmin = t.kmax, kmax = -1;
    for (int r = 0; r < t.lanes; ++r) {
      k0[r] = 1;
      k1[r] = 0;  // empty
      const int64_t n = t.n[r];
      if (r >= t.count || n <= 0) continue;
      const double slope = static_cast<double>(t.h[r]) * static_cast<double>(t.dx[r]);
      const double p0 = static_cast<double>(t.ex[r]) + 0.5 * slope;
      int64_t a = 0, z = n - 1;
      if (std::isfinite(slope) && std::isfinite(p0)) {
        if (std::abs(slope) * static_cast<double>(n) < 1e-9) {
          if (p0 < lo || p0 > hi) continue;
        } else {
          double ka = (lo - p0) / slope, kz = (hi - p0) / slope;
          if (ka > kz) std::swap(ka, kz);
          ka = std::floor(ka) - 1.0;
          kz = std::ceil(kz) + 1.0;
          if (kz < 0.0 || ka > static_cast<double>(n - 1)) continue;
          a = static_cast<int64_t>(std::max(ka, 0.0));
          z = static_cast<int64_t>(std::min(kz, static_cast<double>(n - 1)));
        }
      }
      k0[r] = static_cast<int32_t>(a);
      k1[r] = static_cast<int32_t>(z);
      kmin = std::min(kmin, k0[r]);
      kmax = std::max(kmax, k1[r]);
    }
    if (kmax < kmin) continue;
    if constexpr (PLANES) MakePlaneLanes<T, int64_t>(t, J2, K2, C, &pl);
    for (int k = kmin; k <= kmax; ++k) {
      if ((k - kmin) % t.pf_every == 0) PrefetchAhead<T, int64_t, true>(gflat, g, t, k, scratch);
      const T kh = static_cast<T>(k) + T(0.5);
      for (int r = 0; r < t.lanes; ++r) {  // positions, cells, fractions: vectorised
        const T s = kh * t.h[r];
        const T px = t.ex[r] + s * t.dx[r];
        const T py = t.ey[r] + s * t.dy[r];
        const T pz = t.ez[r] + s * t.dz[r];
        mask[r] = InsideMask(px, py, pz, bd, (k >= k0[r]) & (k <= k1[r]));
        const T qx = Clip(px, bd.ux), qy = Clip(py, bd.uy), qz = Clip(pz, bd.uz);
        int32_t ix, iy, iz;
        Cells(qx, qy, qz, bd, &ix, &iy, &iz);
        cx[r] = ix;
        cy[r] = iy;
        cz[r] = iz;
        fx[r] = qx;
        fy[r] = qy;
        fz[r] = qz;
      }
      for (int r = 0; r < t.count; ++r) {  // the scatter, in lane order
        if (mask[r] == T(0)) continue;
        int32_t ix = cx[r], iy = cy[r], iz = cz[r];
        const int32_t axis = t.axis[r];
        if constexpr (PLANES) {  // trilinear.plane_cell_and_fraction: the axial cell is round(p)
          ix = axis == 0 ? static_cast<int32_t>(RoundEven(fx[r])) : ix;
          iy = axis == 1 ? static_cast<int32_t>(RoundEven(fy[r])) : iy;
          iz = axis == 2 ? static_cast<int32_t>(RoundEven(fz[r])) : iz;
        }
        if (ix + 1 < i0 || ix >= i1) continue;
        T ax = fx[r] - static_cast<T>(ix), ay = fy[r] - static_cast<T>(iy), az = fz[r] - static_cast<T>(iz);
        if constexpr (PLANES) {  // the axial fraction is 0
          ax = axis == 0 ? T(0) : ax;
          ay = axis == 1 ? T(0) : ay;
          az = axis == 2 ? T(0) : az;
        }
        // trilinear.corner_weights, times g * step (march._chunk_backward: w * g_step)
        const T gx = T(1) - ax, gy = T(1) - ay, gz = T(1) - az;
        const T w[8] = {gx * gy * gz, gx * gy * az, gx * ay * gz, gx * ay * az,
                        ax * gy * gz, ax * gy * az, ax * ay * gz, ax * ay * az};
        const T h = t.h[r];
        const T* gr = cot + t.ray[r] * C;
        T gs[CC > 0 ? CC : 1];
        if constexpr (CC > 0) {
          for (int c = 0; c < CC; ++c) gs[c] = gr[c] * h;
        }
        const bool lower = ix >= i0, upper = ix + 1 < i1;  // corner planes i = ix, ix + 1 in the slab
        T* const base = gflat + ((ix * J2 + iy) * K2 + iz) * C;
        for (int corner = 0; corner < 8; ++corner) {
          const int di = corner >> 2, dj = (corner >> 1) & 1, dk = corner & 1;
          if constexpr (PLANES) {  // corners beyond the plane: weight 0, skipped
            if ((axis == 0 && di) || (axis == 1 && dj) || (axis == 2 && dk)) continue;
          }
          if (di ? !upper : !lower) continue;
          T* dst = base + di * sI + dj * sJ + dk * sK;
          const T wc = w[corner];
          if constexpr (CC > 0) {
            for (int c = 0; c < CC; ++c) dst[c] += wc * gs[c];
          } else {
            for (int64_t c = 0; c < C; ++c) dst[c] += wc * (gr[c] * h);
          }
        }
      }
    }
  }
}

template <typename T>
void VolumeBackward(const Grid& g, const Batch& b, const Rays<T>& rays, const T* cot, const Operand& o_cot,
                    int64_t num_rays, int64_t width, T* gflat) {
  const int threads = NumThreads();
  const Tiling tl = Tiling::Make(num_rays, width);
  // Slabs: a few per thread for balance; every voxel has one owner, so the result does not depend
  // on the slab or thread count.
  const int64_t slabs = std::max<int64_t>(1, std::min<int64_t>(g.I2, 4 * static_cast<int64_t>(threads)));
  const int64_t size = g.I2 * g.J2 * g.K2 * g.C;
  using SlabFn = void (*)(const Grid&, const Tiling&, int64_t, int64_t, const T*, const T*, const T*,
                          const int32_t*, const T*, T*);
  SlabFn slab;
  switch (g.planes ? -g.C : g.C) {
    case 1: slab = VolumeSlab<T, 1, false>; break;
    case 2: slab = VolumeSlab<T, 2, false>; break;
    case 3: slab = VolumeSlab<T, 3, false>; break;
    case 4: slab = VolumeSlab<T, 4, false>; break;
    case -1: slab = VolumeSlab<T, 1, true>; break;
    case -2: slab = VolumeSlab<T, 2, true>; break;
    case -3: slab = VolumeSlab<T, 3, true>; break;
    case -4: slab = VolumeSlab<T, 4, true>; break;
    default: slab = g.planes ? VolumeSlab<T, 0, true> : VolumeSlab<T, 0, false>;
  }
  ParallelFor(b.count * slabs, threads, [&](int64_t item) {
    const int64_t bi = item / slabs, s = item % slabs;
    const int64_t i0 = s * g.I2 / slabs, i1 = (s + 1) * g.I2 / slabs;
    if (i1 <= i0) return;
    slab(g, tl, i0, i1, rays.entry + Offset(b, rays.o_entry, bi),
         rays.direction + Offset(b, rays.o_direction, bi), rays.step + Offset(b, rays.o_step, bi),
         rays.num_steps + Offset(b, rays.o_num_steps, bi), cot + Offset(b, o_cot, bi), gflat + bi * size);
  });
}

// ------------------------------------------------------------------------------------------------
// FFI handlers

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jaxdrr native projector: " + what);
}

std::string CheckGrid(int64_t pi, int64_t pj, int64_t pk, int64_t planes, Grid* g) {
  if (pi < 2 || pj < 2 || pk < 2) return "padded shape must be at least 2 per axis";
  if (pi > (int64_t{1} << 30) || pj > (int64_t{1} << 30) || pk > (int64_t{1} << 30)) return "padded shape too large";
  g->I2 = pi;
  g->J2 = pj;
  g->K2 = pk;
  g->planes = planes != 0;
  return "";
}

template <typename T>
std::string CheckRays(const Batch& b, int64_t num_rays, ffi::AnyBuffer entry, ffi::AnyBuffer direction,
                      ffi::AnyBuffer step, ffi::AnyBuffer num_steps, Rays<T>* rays) {
  std::string err;
  if (!(err = CheckOperand("entry", entry, {num_rays, 3}, b, &rays->o_entry)).empty()) return err;
  if (!(err = CheckOperand("direction", direction, {num_rays, 3}, b, &rays->o_direction)).empty()) return err;
  if (!(err = CheckOperand("step", step, {num_rays}, b, &rays->o_step)).empty()) return err;
  if (!(err = CheckOperand("num_steps", num_steps, {num_rays}, b, &rays->o_num_steps)).empty()) return err;
  if (num_steps.element_type() != ffi::DataType::S32) return "num_steps must be int32";
  rays->entry = static_cast<const T*>(entry.untyped_data());
  rays->direction = static_cast<const T*>(direction.untyped_data());
  rays->step = static_cast<const T*>(step.untyped_data());
  rays->num_steps = static_cast<const int32_t*>(num_steps.untyped_data());
  return "";
}

bool SameFloatType(ffi::DataType t, std::initializer_list<ffi::DataType> others) {
  if (t != ffi::DataType::F32 && t != ffi::DataType::F64) return false;
  for (auto o : others) {
    if (o != t) return false;
  }
  return true;
}

template <typename T>
ffi::Error ForwardTyped(ffi::AnyBuffer flat, ffi::AnyBuffer entry, ffi::AnyBuffer direction, ffi::AnyBuffer step,
                        ffi::AnyBuffer num_steps, ffi::Result<ffi::AnyBuffer> out, Grid g, int64_t width) {
  Batch b;
  std::string err = MakeBatch(*out, 2, &b);
  if (!err.empty()) return Invalid(err);
  const auto od = out->dimensions();
  const int64_t num_rays = od[b.rank], C = od[b.rank + 1];
  g.C = C;
  Operand o_flat;
  if (!(err = CheckOperand("flat", flat, {g.I2 * g.J2 * g.K2, C}, b, &o_flat)).empty()) return Invalid(err);
  Rays<T> rays;
  if (!(err = CheckRays<T>(b, num_rays, entry, direction, step, num_steps, &rays)).empty()) return Invalid(err);
  if (b.count == 0 || num_rays == 0 || C == 0) return ffi::Error::Success();
  Forward<T>(g, b, static_cast<const T*>(flat.untyped_data()), o_flat, rays, num_rays, width,
             static_cast<T*>(out->untyped_data()));
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::AnyBuffer flat, ffi::AnyBuffer entry, ffi::AnyBuffer direction, ffi::AnyBuffer step,
                       ffi::AnyBuffer num_steps, ffi::Result<ffi::AnyBuffer> out, int64_t pi, int64_t pj,
                       int64_t pk, int64_t planes, int64_t width) {
  try {
    Grid g;
    std::string err = CheckGrid(pi, pj, pk, planes, &g);
    if (!err.empty()) return Invalid(err);
    const auto t = flat.element_type();
    if (!SameFloatType(t, {entry.element_type(), direction.element_type(), step.element_type(),
                           out->element_type()})) {
      return Invalid("volume, rays and output must all be float32 or all float64");
    }
    if (t == ffi::DataType::F32) return ForwardTyped<float>(flat, entry, direction, step, num_steps, out, g, width);
    return ForwardTyped<double>(flat, entry, direction, step, num_steps, out, g, width);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxdrr native projector: ") + e.what());
  }
}

template <typename T>
ffi::Error GeometryTyped(ffi::AnyBuffer flat, ffi::AnyBuffer entry, ffi::AnyBuffer direction,
                         ffi::AnyBuffer step, ffi::AnyBuffer num_steps, ffi::AnyBuffer cot,
                         ffi::Result<ffi::AnyBuffer> g_entry, ffi::Result<ffi::AnyBuffer> g_direction, Grid g,
                         int64_t width) {
  Batch b;
  std::string err = MakeBatch(*g_entry, 2, &b);
  if (!err.empty()) return Invalid(err);
  const int64_t num_rays = g_entry->dimensions()[b.rank];
  const auto cd = cot.dimensions();
  if (cd.size() != static_cast<size_t>(b.rank + 2)) return Invalid("cotangent rank mismatch");
  const int64_t C = cd[b.rank + 1];
  g.C = C;
  Operand o_flat, o_cot, o_gd;
  if (!(err = CheckOperand("flat", flat, {g.I2 * g.J2 * g.K2, C}, b, &o_flat)).empty()) return Invalid(err);
  if (!(err = CheckOperand("cotangent", cot, {num_rays, C}, b, &o_cot)).empty()) return Invalid(err);
  if (!(err = CheckOperand("g_direction", *g_direction, {num_rays, 3}, b, &o_gd)).empty()) return Invalid(err);
  Rays<T> rays;
  if (!(err = CheckRays<T>(b, num_rays, entry, direction, step, num_steps, &rays)).empty()) return Invalid(err);
  if (b.count == 0 || num_rays == 0) return ffi::Error::Success();
  if (g_direction->dimensions().size() != g_entry->dimensions().size()) return Invalid("g_direction rank");
  T* ge = static_cast<T*>(g_entry->untyped_data());
  T* gd = static_cast<T*>(g_direction->untyped_data());
  if (C == 0) {
    std::fill(ge, ge + b.count * num_rays * 3, T(0));
    std::fill(gd, gd + b.count * num_rays * 3, T(0));
    return ffi::Error::Success();
  }
  GeometryBackward<T>(g, b, static_cast<const T*>(flat.untyped_data()), o_flat, rays,
                      static_cast<const T*>(cot.untyped_data()), o_cot, num_rays, width, ge, gd);
  return ffi::Error::Success();
}

ffi::Error GeometryImpl(ffi::AnyBuffer flat, ffi::AnyBuffer entry, ffi::AnyBuffer direction, ffi::AnyBuffer step,
                        ffi::AnyBuffer num_steps, ffi::AnyBuffer cot, ffi::Result<ffi::AnyBuffer> g_entry,
                        ffi::Result<ffi::AnyBuffer> g_direction, int64_t pi, int64_t pj, int64_t pk,
                        int64_t planes, int64_t width) {
  try {
    Grid g;
    std::string err = CheckGrid(pi, pj, pk, planes, &g);
    if (!err.empty()) return Invalid(err);
    const auto t = flat.element_type();
    if (!SameFloatType(t, {entry.element_type(), direction.element_type(), step.element_type(),
                           cot.element_type(), g_entry->element_type(), g_direction->element_type()})) {
      return Invalid("volume, rays, cotangent and outputs must all be float32 or all float64");
    }
    if (t == ffi::DataType::F32) {
      return GeometryTyped<float>(flat, entry, direction, step, num_steps, cot, g_entry, g_direction, g, width);
    }
    return GeometryTyped<double>(flat, entry, direction, step, num_steps, cot, g_entry, g_direction, g, width);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxdrr native projector: ") + e.what());
  }
}

template <typename T>
ffi::Error VolumeTyped(ffi::AnyBuffer entry, ffi::AnyBuffer direction, ffi::AnyBuffer step,
                       ffi::AnyBuffer num_steps, ffi::AnyBuffer cot, ffi::Result<ffi::AnyBuffer> g_flat, Grid g,
                       int64_t width) {
  Batch b;
  std::string err = MakeBatch(*g_flat, 2, &b);
  if (!err.empty()) return Invalid(err);
  const auto fd = g_flat->dimensions();
  if (fd[b.rank] != g.I2 * g.J2 * g.K2) return Invalid("g_flat rows do not match the padded shape");
  const int64_t C = fd[b.rank + 1];
  g.C = C;
  const auto cd = cot.dimensions();
  if (cd.size() != static_cast<size_t>(b.rank + 2)) return Invalid("cotangent rank mismatch");
  const int64_t num_rays = cd[b.rank];
  Operand o_cot;
  if (!(err = CheckOperand("cotangent", cot, {num_rays, C}, b, &o_cot)).empty()) return Invalid(err);
  Rays<T> rays;
  if (!(err = CheckRays<T>(b, num_rays, entry, direction, step, num_steps, &rays)).empty()) return Invalid(err);
  T* out = static_cast<T*>(g_flat->untyped_data());
  if (b.count == 0 || C == 0) return ffi::Error::Success();
  VolumeBackward<T>(g, b, rays, static_cast<const T*>(cot.untyped_data()), o_cot, num_rays, width, out);
  return ffi::Error::Success();
}

ffi::Error VolumeImpl(ffi::AnyBuffer entry, ffi::AnyBuffer direction, ffi::AnyBuffer step, ffi::AnyBuffer num_steps,
                      ffi::AnyBuffer cot, ffi::Result<ffi::AnyBuffer> g_flat, int64_t pi, int64_t pj, int64_t pk,
                      int64_t planes, int64_t width) {
  try {
    Grid g;
    std::string err = CheckGrid(pi, pj, pk, planes, &g);
    if (!err.empty()) return Invalid(err);
    const auto t = g_flat->element_type();
    if (!SameFloatType(t, {entry.element_type(), direction.element_type(), step.element_type(),
                           cot.element_type()})) {
      return Invalid("rays, cotangent and output must all be float32 or all float64");
    }
    if (t == ffi::DataType::F32) return VolumeTyped<float>(entry, direction, step, num_steps, cot, g_flat, g, width);
    return VolumeTyped<double>(entry, direction, step, num_steps, cot, g_flat, g, width);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxdrr native projector: ") + e.what());
  }
}

// ------------------------------------------------------------------------------------------------
// Padding: volume [..., C, I, J, K] <-> the zero-padded channels-last flat volume
// [..., (I+2)(J+2)(K+2), C] (march.pad_channels_last and its transpose), one padded i-plane per
// work item. XLA's pad + transpose of a 256^3 volume took as long as half the native march.

template <typename T>
void PadPlane(const T* vol, int64_t C, int64_t I, int64_t J, int64_t K, int64_t i2, T* out) {
  const int64_t J2 = J + 2, K2 = K + 2;
  T* plane = out + i2 * J2 * K2 * C;
  if (i2 == 0 || i2 == I + 1) {
    std::fill(plane, plane + J2 * K2 * C, T(0));
    return;
  }
  const int64_t i = i2 - 1;
  std::fill(plane, plane + K2 * C, T(0));                           // j2 = 0
  std::fill(plane + (J + 1) * K2 * C, plane + J2 * K2 * C, T(0));   // j2 = J + 1
  for (int64_t j = 0; j < J; ++j) {
    T* row = plane + (j + 1) * K2 * C;
    std::fill(row, row + C, T(0));
    std::fill(row + (K + 1) * C, row + K2 * C, T(0));
    for (int64_t c = 0; c < C; ++c) {
      const T* src = vol + ((c * I + i) * J + j) * K;
      T* dst = row + C + c;
      if (C == 1) {
        std::copy(src, src + K, dst);
      } else {
        for (int64_t k = 0; k < K; ++k) dst[k * C] = src[k];
      }
    }
  }
}

template <typename T>
void UnpadPlane(const T* flat, int64_t C, int64_t I, int64_t J, int64_t K, int64_t i, T* vol) {
  const int64_t J2 = J + 2, K2 = K + 2;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < J; ++j) {
      const T* src = flat + (((i + 1) * J2 + (j + 1)) * K2 + 1) * C + c;
      T* dst = vol + ((c * I + i) * J + j) * K;
      if (C == 1) {
        std::copy(src, src + K, dst);
      } else {
        for (int64_t k = 0; k < K; ++k) dst[k] = src[k * C];
      }
    }
  }
}

// unpad = false: volume -> flat; true: flat -> volume.
template <typename T>
ffi::Error PadTyped(ffi::AnyBuffer in, ffi::Result<ffi::AnyBuffer> out, bool unpad) {
  const ffi::AnyBuffer vol_buf = unpad ? *out : in;
  const auto vd = vol_buf.dimensions();
  if (vd.size() < 4 || vd.size() > static_cast<size_t>(4 + kMaxBatch)) return Invalid("pad: volume rank");
  const int rank = static_cast<int>(vd.size()) - 4;
  const int64_t C = vd[rank], I = vd[rank + 1], J = vd[rank + 2], K = vd[rank + 3];
  const int64_t N = (I + 2) * (J + 2) * (K + 2);
  const ffi::AnyBuffer flat_buf = unpad ? in : *out;
  const auto fd = flat_buf.dimensions();
  if (fd.size() != static_cast<size_t>(rank + 2) || fd[rank] != N || fd[rank + 1] != C) {
    return Invalid("pad: the flat volume must be [..., (I+2)(J+2)(K+2), C]");
  }
  int64_t batch = 1;
  for (int d = 0; d < rank; ++d) {
    if (vd[d] != fd[d]) return Invalid("pad: batch axes differ");
    batch *= vd[d];
  }
  const int64_t vsize = C * I * J * K, fsize = N * C;
  if (batch == 0 || vsize == 0) return ffi::Error::Success();
  const T* src = static_cast<const T*>(in.untyped_data());
  T* dst = static_cast<T*>(out->untyped_data());
  if (!unpad) {
    ParallelFor(batch * (I + 2), NumThreads(), [&](int64_t item) {
      const int64_t b = item / (I + 2), i2 = item % (I + 2);
      PadPlane<T>(src + b * vsize, C, I, J, K, i2, dst + b * fsize);
    });
  } else {
    ParallelFor(batch * I, NumThreads(), [&](int64_t item) {
      const int64_t b = item / I, i = item % I;
      UnpadPlane<T>(src + b * fsize, C, I, J, K, i, dst + b * vsize);
    });
  }
  return ffi::Error::Success();
}

ffi::Error PadImpl(ffi::AnyBuffer in, ffi::Result<ffi::AnyBuffer> out, int64_t unpad) {
  try {
    const auto t = in.element_type();
    if (!SameFloatType(t, {out->element_type()})) return Invalid("pad: float32 or float64, the same in and out");
    if (t == ffi::DataType::F32) return PadTyped<float>(in, out, unpad != 0);
    return PadTyped<double>(in, out, unpad != 0);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxdrr native projector: ") + e.what());
  }
}

}  // namespace
}  // namespace jaxdrr

XLA_FFI_DEFINE_HANDLER(kJaxdrrForward, jaxdrr::ForwardImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()  // flat [..., N, C]
                           .Arg<ffi::AnyBuffer>()  // entry [..., R, 3]
                           .Arg<ffi::AnyBuffer>()  // direction [..., R, 3]
                           .Arg<ffi::AnyBuffer>()  // step [..., R]
                           .Arg<ffi::AnyBuffer>()  // num_steps [..., R] int32
                           .Ret<ffi::AnyBuffer>()  // out [..., R, C]
                           .Attr<int64_t>("padded_i")
                           .Attr<int64_t>("padded_j")
                           .Attr<int64_t>("padded_k")
                           .Attr<int64_t>("planes")
                           .Attr<int64_t>("width"));

XLA_FFI_DEFINE_HANDLER(kJaxdrrGeometry, jaxdrr::GeometryImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()  // flat
                           .Arg<ffi::AnyBuffer>()  // entry
                           .Arg<ffi::AnyBuffer>()  // direction
                           .Arg<ffi::AnyBuffer>()  // step
                           .Arg<ffi::AnyBuffer>()  // num_steps
                           .Arg<ffi::AnyBuffer>()  // cotangent [..., R, C]
                           .Ret<ffi::AnyBuffer>()  // g_entry [..., R, 3]
                           .Ret<ffi::AnyBuffer>()  // g_direction [..., R, 3]
                           .Attr<int64_t>("padded_i")
                           .Attr<int64_t>("padded_j")
                           .Attr<int64_t>("padded_k")
                           .Attr<int64_t>("planes")
                           .Attr<int64_t>("width"));

XLA_FFI_DEFINE_HANDLER(kJaxdrrVolume, jaxdrr::VolumeImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()  // entry
                           .Arg<ffi::AnyBuffer>()  // direction
                           .Arg<ffi::AnyBuffer>()  // step
                           .Arg<ffi::AnyBuffer>()  // num_steps
                           .Arg<ffi::AnyBuffer>()  // cotangent [..., R, C]
                           .Ret<ffi::AnyBuffer>()  // g_flat [..., N, C]
                           .Attr<int64_t>("padded_i")
                           .Attr<int64_t>("padded_j")
                           .Attr<int64_t>("padded_k")
                           .Attr<int64_t>("planes")
                           .Attr<int64_t>("width"));

XLA_FFI_DEFINE_HANDLER(kJaxdrrPad, jaxdrr::PadImpl,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()  // volume [..., C, I, J, K] (or flat, unpad = 1)
                           .Ret<ffi::AnyBuffer>()  // flat [..., N, C] (or volume)
                           .Attr<int64_t>("unpad"));

JAXDRR_EXPORT XLA_FFI_Error* jaxdrr_pad_channels_last(XLA_FFI_CallFrame* call_frame) {
  return kJaxdrrPad(call_frame);
}

JAXDRR_EXPORT XLA_FFI_Error* jaxdrr_project_fwd(XLA_FFI_CallFrame* call_frame) {
  return kJaxdrrForward(call_frame);
}

JAXDRR_EXPORT XLA_FFI_Error* jaxdrr_project_bwd_geometry(XLA_FFI_CallFrame* call_frame) {
  return kJaxdrrGeometry(call_frame);
}

JAXDRR_EXPORT XLA_FFI_Error* jaxdrr_project_bwd_volume(XLA_FFI_CallFrame* call_frame) {
  return kJaxdrrVolume(call_frame);
}

// Build information for jaxdrr.ops.project_backend(): ABI of this library, FFI headers, SIMD.
JAXDRR_EXPORT int jaxdrr_native_abi_version() { return 2; }

JAXDRR_EXPORT int jaxdrr_native_default_threads() { return jaxdrr::NumThreads(); }

JAXDRR_EXPORT int jaxdrr_native_simd() { return jaxdrr::HasAvx2() ? 2 : 0; }

JAXDRR_EXPORT int jaxdrr_native_ffi_api_version() { return XLA_FFI_API_MAJOR * 1000 + XLA_FFI_API_MINOR; }
