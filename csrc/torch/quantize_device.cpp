// CUDA (and simt) registrations of the quantize family: checks, then the params struct of each kernel.
#include "kernels/quantize/multiscale.h"
#include "kernels/quantize/vq_nearest.h"
#include "torch/device.h"
#include "torch/quantize.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdlib>

namespace fastar {

int vq_nearest_slices(int64_t n, int64_t k, int sm_count) {
  kernels::VqNearestParams p{};
  p.n = n, p.k = int(k), p.slices = kernels::vq_nearest_auto_slices(n, p.k, sm_count);
  if (const char* env = std::getenv("FASTAR_VQ_NEAREST_SLICES")) {
    char* end = nullptr;
    const long asked = std::strtol(env, &end, 10);
    TORCH_CHECK(*env && !*end && asked >= 1 && asked <= INT32_MAX,
                "vq_nearest: FASTAR_VQ_NEAREST_SLICES must be a positive integer, got '", env, "'");
    p.slices = int(asked);
  }
  return kernels::vq_nearest_slices(p);
}

static std::tuple<at::Tensor, at::Tensor> vq_nearest_device(const at::Tensor& x, const at::Tensor& codebook,
                                                            c10::string_view metric) {
  check_vq_nearest(x, codebook, kDeviceType);
  const bool cosine = is_cosine(metric);
  TORCH_CHECK(x.size(1) <= INT32_MAX, "vq_nearest: x has D=", x.size(1), ", more than the 2^31-1 the kernel indexes");
  DeviceScope scope(x);
  // The kernel reads one element type: a mixed pair meets in float32, which loses nothing.
  const bool same = x.scalar_type() == codebook.scalar_type();
  const at::Tensor x_ND = (same ? x : x.to(at::kFloat)).contiguous();                // (N, D)
  const at::Tensor e_KD = (same ? codebook : codebook.to(at::kFloat)).contiguous();  // (K, D)
  at::Tensor idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));    // (N,)
  at::Tensor dist = at::empty({x.size(0)}, x.options().dtype(at::kFloat));  // (N,)
  kernels::VqNearestParams p{};
  p.x = x_ND.data_ptr(), p.codebook = e_KD.data_ptr();
  p.indices = idx.data_ptr<int64_t>(), p.distances = dist.data_ptr<float>();
  p.n = x.size(0), p.k = int(e_KD.size(0)), p.d = int(e_KD.size(1));
  p.dtype = kernel_dtype(x_ND.scalar_type()), p.cosine = cosine;
  p.slices = vq_nearest_slices(p.n, p.k, sm_count(x));
  const at::Tensor ws = at::empty({int64_t(kernels::vq_nearest_workspace_bytes(p))}, x.options().dtype(at::kByte));
  p.workspace = ws.data_ptr();
  check_launch(kernels::vq_nearest_launch(p, scope.stream()), "vq_nearest");
  return {idx, dist};
}

// Calls launch(p, first scale, stream) per chunk of kMsqMaxScales scales, with p.S, p.pn, p.offset of the chunk
// (offsets count the cells of all earlier scales).
template <class P, class Launch>
static void for_scale_chunks(P& p, c10::IntArrayRef patch_nums, const char* op, cudaStream_t stream, Launch launch) {
  int offset = 0;
  for (size_t first = 0; first < patch_nums.size(); first += kernels::kMsqMaxScales) {
    p.S = int(std::min<size_t>(kernels::kMsqMaxScales, patch_nums.size() - first));
    for (int s = 0; s < p.S; ++s) {
      p.pn[s] = int(patch_nums[first + s]), p.offset[s] = offset;
      offset += p.pn[s] * p.pn[s];
    }
    check_launch(launch(p, int(first), stream), op);
  }
}

static at::Tensor msq_residual_search_device(at::Tensor& f_hat, at::Tensor& f_rest, const std::optional<at::Tensor>& h,
                                             const at::Tensor& codebook, int64_t pn) {
  check_msq_residual_search(f_hat, f_rest, h, codebook, pn, kDeviceType);
  DeviceScope scope(f_hat);
  const int64_t B = f_hat.size(0), C = f_hat.size(1), H = f_hat.size(2);
  at::Tensor idx = at::empty({B, pn * pn}, f_hat.options().dtype(at::kLong));  // (B, pn^2)
  const at::Tensor e_VC = codebook.contiguous();
  // Rows too long for the fused kernel's shared memory go through global memory.
  const bool staged = C > kernels::kMsqFusedMaxC && pn < H;
  at::Tensor rows = staged ? at::empty({B, pn * pn, C}, f_hat.options()) : at::Tensor();  // (B, pn^2, C)
  kernels::MsqResidualSearchParams p{};
  p.f_hat = f_hat.data_ptr<float>(), p.f_rest = f_rest.data_ptr<float>();
  p.h = h ? h->data_ptr<float>() : nullptr, p.codebook = e_VC.data_ptr<float>();
  p.indices = idx.data_ptr<int64_t>(), p.rows = staged ? rows.data_ptr<float>() : nullptr;
  p.B = int(B), p.C = int(C), p.H = int(H), p.pn = int(pn), p.V = int(e_VC.size(0));
  check_launch(kernels::msq_residual_search_launch(p, scope.stream()), "msq_residual_search");
  return idx;
}

static at::Tensor msq_up_device(const at::Tensor& src, const std::optional<at::Tensor>& idx,
                                c10::IntArrayRef patch_nums, int64_t H) {
  const int64_t B = check_msq_up(src, idx, patch_nums, H, kDeviceType);
  DeviceScope scope(src);
  const int64_t S = int64_t(patch_nums.size()), C = src.size(-1);
  at::Tensor out = at::empty({S * B, C, H, H}, src.options().memory_format(at::MemoryFormat::ChannelsLast));
  kernels::MsqUpParams p{};
  p.src = src.data_ptr(), p.idx = idx ? idx->data_ptr<int64_t>() : nullptr, p.V = idx ? src.size(0) : 0;
  p.B = int(B), p.C = int(C), p.H = int(H), p.cells = int(idx ? idx->size(1) : src.size(1));
  p.dtype = kernel_dtype(src.scalar_type());
  for_scale_chunks(p, patch_nums, "msq_up", scope.stream(), [&](kernels::MsqUpParams& q, int first, cudaStream_t st) {
    q.out = static_cast<char*>(out.data_ptr()) + first * B * H * H * C * out.element_size();
    return kernels::msq_up_launch(q, st);
  });
  return out;
}

static at::Tensor msq_add_down_device(at::Tensor& f_hat, at::TensorList h, c10::IntArrayRef patch_nums) {
  const int64_t cells = check_msq_add_down(f_hat, h, patch_nums, kDeviceType);
  DeviceScope scope(f_hat);
  at::Tensor rows = at::empty({f_hat.size(0), cells, f_hat.size(1)}, f_hat.options());  // (B, sum pn_s^2, C)
  kernels::MsqAddDownParams p{};
  p.f_hat = f_hat.data_ptr<float>(), p.rows = rows.data_ptr<float>();
  p.B = int(f_hat.size(0)), p.C = int(f_hat.size(1)), p.H = int(f_hat.size(2)), p.cells = int(cells);
  for_scale_chunks(p, patch_nums, "msq_add_down", scope.stream(),
                   [&](kernels::MsqAddDownParams& q, int first, cudaStream_t st) {
                     for (int s = 0; s < q.S; ++s) q.h[s] = h[first + s].data_ptr<float>();
                     return kernels::msq_add_down_launch(q, st);
                   });
  return rows;
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("vq_nearest", &fastar::vq_nearest_device);
  m.impl("msq_residual_search", &fastar::msq_residual_search_device);
  m.impl("msq_up", &fastar::msq_up_device);
  m.impl("msq_add_down", &fastar::msq_add_down_device);
}
