"""multi_axis_attention (HiT's regional + dilated heads) on every backend against the float64 reference written from
the definition (block_images + per-axis attention): forward, lse and the three gradients."""
import pytest
import torch

import fastar
from fastar.reference import multi_axis as ref
from tests.conftest import backend_device, deterministic_alerts, sanitized
from tests.tolerance import assert_close

# (B, H, W, heads, heads_kv, D, b): HiT's 16 x 16 stage in small (multi-query), b = 1, one block (b = H = W),
# H != W with multi-head K/V, B = 1 with one key head per axis, empty batch, 64-token groups (HiT's b = 8), and
# 144-token groups: three 64-key tiles of the CUDA kernels, the last partial, dq added by three blocks (an order
# that changes its last bits: ScheduleCheck's ATOMIC_OUTPUTS).
SHAPES = [(2, 8, 8, 4, 1, 32, 4), (1, 4, 6, 2, 1, 32, 1), (1, 8, 8, 2, 2, 64, 8), (2, 8, 12, 4, 4, 32, 4),
          (1, 6, 6, 4, 2, 64, 3), (0, 4, 4, 2, 1, 32, 2), (1, 16, 16, 2, 1, 32, 8), (1, 12, 12, 2, 1, 32, 1)]


@pytest.fixture
def ma_backend(backend):
    if backend != "cpu" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            f"{'fastar_simt' if backend == 'simt' else 'fastar'}::multi_axis_attention_fwd",
            "CPU" if backend == "simt" else "CUDA"):
        pytest.skip(f"no {backend} multi_axis kernel is built")
    return backend


def randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def qkv(B, H, W, heads, hk, D, dtype, seed=1):
    return (randn(B, H, W, heads, D, dtype=dtype, seed=seed), randn(B, H, W, hk, D, dtype=dtype, seed=seed + 1),
            randn(B, H, W, hk, D, dtype=dtype, seed=seed + 2))


def reference(q, k, v, b, dout, dtype, **kw):
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = ref.multi_axis_attention(q, k, v, b, return_lse=True, **kw)
    return out, lse, torch.autograd.grad(out, (q, k, v), dout.to(dtype), allow_unused=True)


def check(q, k, v, b, backend, device=None, **kw):
    """fastar vs the float64 reference under tests/tolerance.py, in q's dtype; returns fastar's out. device: where
    the op runs (default: the backend's)."""
    dev = device or backend_device(backend)
    dout = randn(*q.shape, dtype=q.dtype, seed=99)
    qd, kd, vd = (t.to(dev).requires_grad_() for t in (q, k, v))
    out, lse = fastar.ops.multi_axis_attention(qd, kd, vd, b, return_lse=True, **kw)
    grads = [g.cpu() for g in torch.autograd.grad(out, (qd, kd, vd), dout.to(dev))]
    assert fastar.last_backend("multi_axis_attention") == backend
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == torch.float32
    out64, lse64, g64 = reference(q, k, v, b, dout, torch.float64, **kw)
    out_lp, lse_lp, g_lp = reference(q, k, v, b, dout, q.dtype, **kw)
    assert_close("multi_axis_attention", out.cpu(), out64, out_lp)
    assert_close("multi_axis_attention", lse.cpu(), lse64, lse_lp)
    scale = max([a.abs().max().item() for a in g64 if a.numel()] or [0.0])
    for name, a, a64, a_lp in zip("qkv", grads, g64, g_lp):
        assert a.dtype == q.dtype, f"d{name} dtype"
        assert_close("multi_axis_attention_bwd", a, a64, a_lp, scale=scale)
    return out.detach().cpu()


@pytest.mark.parametrize("shape", sanitized(SHAPES, {SHAPES[0], SHAPES[3], SHAPES[7]}), ids=str)
def test_multi_axis_attention(ma_backend, dtype, shape):
    B, H, W, heads, hk, D, b = shape
    check(*qkv(B, H, W, heads, hk, D, dtype), b, ma_backend)


@pytest.mark.parametrize("magnitude", [1e3, 1e6, 1e19])
def test_multi_axis_attention_saturated_rows(ma_backend, magnitude):
    """Scores far apart (q ~ N(0, magnitude^2)): each row's softmax is one-hot and the reference's dq and dk are 0.
    The backward made P from lse, rounded once more into base 2 on the way back, ~2 ulps of |S| off: cpu gradients
    of 1e6 where torch's float32 were 0.6 (magnitude 1e6), inf and NaN on both kernels at 1e19. The CPU now makes P
    as its forward does, the CUDA kernel takes scale S - lse in lse's units."""
    q, k, v = qkv(1, 4, 4, 4, 2, 32, torch.float32)
    check(q * magnitude, k, v, 2, ma_backend)


def test_multi_axis_attention_flat_layout_and_scale(ma_backend):
    """(B, H*W, heads, D) with image_size, as a token sequence holds the image; a custom scale."""
    q, k, v = qkv(2, 8, 4, 4, 1, 32, torch.float32)
    out = check(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), 2, ma_backend, image_size=(8, 4), scale=0.3)
    assert out.shape == (2, 32, 4, 32)


def test_multi_axis_attention_strided_projection(ma_backend, dtype):
    """q, k, v as views of one fused projection (B, H, W, (heads + 2) D), read in place: pixel strides 6 D."""
    B, H, W, heads, D = 2, 8, 8, 4, 32
    qkv_proj = randn(B, H, W, heads + 2, D, dtype=dtype, seed=5)
    q, k, v = qkv_proj[..., :heads, :], qkv_proj[..., heads:heads + 1, :], qkv_proj[..., heads + 1:, :]
    check(q, k, v, 4, ma_backend)
    check(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 2, ma_backend)  # column-major pixels


def test_multi_axis_attention_halves_are_not_interchangeable(ma_backend):
    """The tests above would catch a kernel that swapped the regional and dilated halves: that result differs."""
    q, k, v = qkv(1, 8, 8, 4, 1, 32, torch.float64 if ma_backend == "cpu" else torch.float32, seed=7)
    dev = backend_device(ma_backend)
    out = fastar.ops.multi_axis_attention(q.to(dev), k.to(dev), v.to(dev), 4).cpu().double()
    swapped = ref.multi_axis_attention(q.roll(2, 3).double(), k.double(), v.double(), 4).roll(2, 3)
    right = ref.multi_axis_attention(q.double(), k.double(), v.double(), 4)
    assert (out - right).abs().max() < 1e-4
    assert (out - swapped).abs().max() > 0.1


def test_multi_axis_attention_odd_head_dim(ma_backend):
    """The CPU kernel takes any head dim; the CUDA kernels are built for 32 / 64 / 128, so another head dim runs the
    torch backend, with a warning that names it."""
    q, k, v = qkv(1, 4, 4, 2, 1, 24, torch.float32)
    if ma_backend == "cpu":
        check(q, k, v, 2, ma_backend)
        return
    fastar._backend._warned.clear()
    with pytest.warns(UserWarning, match="takes head dims .* got 24; running the torch backend"):
        check(q, k, v, 2, "torch", device=backend_device(ma_backend))


@pytest.mark.parametrize("shape", [(1, 8, 8, 4, 1, 20, 1), (2, 6, 9, 6, 1, 12, 3)], ids=str)
def test_multi_axis_attention_cpu_tails(dtype, shape):
    """The CPU micro-kernels' edges: head dims that end in a partial vector (20, 12), 64-key groups whose 128 stacked
    query rows span several score chunks (b = 1's dilated half), 9- and 6-token groups (b = 3), 3 query heads per
    key head."""
    B, H, W, heads, hk, D, b = shape
    check(*qkv(B, H, W, heads, hk, D, dtype, seed=17), b, "cpu")


def test_multi_axis_attention_thread_split():
    """The CPU kernel splits the items of both axes over the threads by their cost: any split gives the same bits."""
    q, k, v = (t.requires_grad_() for t in qkv(3, 16, 8, 4, 1, 32, torch.float32, seed=15))
    dout = randn(*q.shape, dtype=torch.float32, seed=16)
    threads, results = torch.get_num_threads(), []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            out = fastar.ops.multi_axis_attention(q, k, v, 4)
            results.append((out.detach(), *torch.autograd.grad(out, (q, k, v), dout)))
    finally:
        torch.set_num_threads(threads)
    assert fastar.last_backend("multi_axis_attention") == "cpu"
    for one, split in zip(*results):
        assert torch.equal(one, split)


@pytest.mark.parametrize("D", [8, 10], ids=["whole-vector-rows", "partial-vector-rows"])
def test_multi_axis_attention_cpu_batch_order_and_streamed_rows(D):
    """The CPU forward runs both axes of a batch row before the next row, the threads' shares splitting a row (3 rows
    over 2 threads), and writes rows of whole aligned vectors by streaming stores, other rows by plain stores."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            check(*qkv(3, 8, 8, 4, 1, D, torch.float32, seed=21), 2, "cpu")
    finally:
        torch.set_num_threads(threads)


def test_multi_axis_attention_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(1, 4, 4, 4, 2, 8, torch.float64, seed=11))
    assert torch.autograd.gradcheck(lambda q, k, v: fastar.ops.multi_axis_attention(q, k, v, 2), (q, k, v))
    q1, k1, v1 = (t.requires_grad_() for t in qkv(2, 2, 4, 2, 1, 8, torch.float64, seed=12))
    assert torch.autograd.gradcheck(lambda q, k, v: fastar.ops.multi_axis_attention(q, k, v, 2), (q1, k1, v1))
    assert fastar.last_backend("multi_axis_attention") == "cpu"


@pytest.mark.parametrize("hk", [1, 2])
def test_multi_axis_attention_lse_gradient(ma_backend, hk):
    """A loss on out and lse: lse's gradient reaches q and k as the reference's does (it was dropped)."""
    q, k, v = qkv(2, 8, 8, 4, hk, 32, torch.float32, seed=14)
    w_out, w_lse = randn(*q.shape, dtype=torch.float64, seed=15), randn(*q.shape[:4], dtype=torch.float64, seed=16)

    def grads(attention, dtype, dev):
        q_, k_, v_ = (t.to(dev, dtype).requires_grad_() for t in (q, k, v))
        out, lse = attention(q_, k_, v_, 4, return_lse=True)
        loss = (out * w_out.to(out)).sum() + (lse * w_lse.to(lse)).sum()
        return [g.cpu() for g in torch.autograd.grad(loss, (q_, k_, v_))]
    got = grads(fastar.ops.multi_axis_attention, torch.float32, backend_device(ma_backend))
    assert fastar.last_backend("multi_axis_attention") == ma_backend
    g64 = grads(ref.multi_axis_attention, torch.float64, "cpu")
    g32 = grads(ref.multi_axis_attention, torch.float32, "cpu")
    scale = max(a.abs().max().item() for a in g64)
    for a, a64, a32 in zip(got, g64, g32):
        assert_close("multi_axis_attention_bwd", a, a64, a32, scale=scale)


def test_multi_axis_attention_backward_alerts_deterministic_algorithms(ma_backend):
    """dq is added by fp32 atomics across key tiles, in an order a GPU does not fix: the cuda backward alerts
    torch.use_deterministic_algorithms (raises, or warns with warn_only); the forward does not, nor cpu or simt."""
    q, k, v = (t.to(backend_device(ma_backend)).requires_grad_()
               for t in qkv(1, 12, 12, 2, 1, 32, torch.float32, seed=18))

    def backward():
        torch.autograd.grad(fastar.ops.multi_axis_attention(q, k, v, 1).sum(), (q, k, v))
    assert deterministic_alerts("multi_axis_attention_bwd", backward) == (ma_backend == "cuda")


def test_multi_axis_attention_double_backward_raises():
    q, k, v = (t.requires_grad_() for t in qkv(1, 4, 4, 2, 1, 8, torch.float64, seed=17))
    with pytest.raises(RuntimeError, match="fastar.ops.multi_axis_attention: double backward"):
        torch.autograd.grad(fastar.ops.multi_axis_attention(q, k, v, 2).square().sum(), q, create_graph=True)


def test_multi_axis_attention_opcheck(ma_backend):
    if ma_backend == "cuda":
        pytest.skip("opcheck runs on the cpu and simt registrations; cuda shares the fake kernels")
    ns = torch.ops.fastar_simt if ma_backend == "simt" else torch.ops.fastar
    q, k, v = (t.requires_grad_() for t in qkv(2, 4, 8, 2, 1, 32, torch.float32, seed=13))
    torch.library.opcheck(ns.multi_axis_attention_fwd.default, (q, k, v, 2, 0.25))
    out, lse = (t.detach() for t in ns.multi_axis_attention_fwd(q, k, v, 2, 0.25))
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, 2, 0.25)
    torch.library.opcheck(ns.multi_axis_attention_bwd.default, args)


def test_multi_axis_attention_compiles_fullgraph():
    q, k, v = (t.requires_grad_() for t in qkv(2, 8, 8, 4, 1, 16, torch.float32, seed=14))

    @torch.compile(fullgraph=True)
    def layer(q, k, v):
        return fastar.ops.multi_axis_attention(q, k, v, 4).sum(3)

    out = layer(q, k, v)
    out.sum().backward()
    assert torch.allclose(out.double(), ref.multi_axis_attention(q.double(), k.double(), v.double(), 4).sum(3),
                          atol=1e-5)
    assert q.grad is not None and k.grad is not None and v.grad is not None


def test_multi_axis_blocks_roundtrip():
    """block_images puts pixel (y, x) at block (y // b) * (W // b) + x // b, offset (y % b) * b + x % b."""
    x = torch.arange(6 * 8).reshape(1, 6, 8, 1, 1)
    blocks = ref.block_images(x, 2)
    assert blocks[0, 1 * 4 + 2, 1 * 2 + 0, 0, 0] == 3 * 8 + 4
    assert torch.equal(ref.unblock_images(blocks, 6, 8, 2), x)


@pytest.mark.parametrize("make, error, match", [
    (lambda: (*qkv(1, 6, 8, 2, 1, 8, torch.float32), 4), ValueError, "image 6 x 8 must be a nonzero multiple of block_size"),
    (lambda: (*qkv(1, 4, 4, 2, 1, 8, torch.float32), True), TypeError, "block_size must be an int, got the bool True"),
    (lambda: (*qkv(1, 4, 4, 2, 1, 8, torch.float32), 2.0), TypeError, "block_size must be an int, got float"),
    (lambda: (*qkv(1, 4, 4, 2, 1, 8, torch.float32), 0), ValueError, "block_size must be >= 1, got 0"),
    (lambda: (*qkv(1, 4, 4, 3, 1, 8, torch.float32), 2), ValueError, "even number of heads"),
    (lambda: (*qkv(1, 4, 4, 6, 3, 8, torch.float32), 2), ValueError, "1 head .multi-query. or an even divisor"),
    (lambda: (qkv(1, 4, 4, 2, 1, 8, torch.float32)[0].half(), *qkv(1, 4, 4, 2, 1, 8, torch.float32)[1:], 2),
     TypeError, "must share a dtype"),
    (lambda: (*(t.flatten(1, 2) for t in qkv(1, 4, 4, 2, 1, 8, torch.float32)), 2), ValueError,
     r"needs image_size=\(H, W\)"),
    (lambda: (qkv(1, 4, 4, 2, 1, 8, torch.float32)[0], torch.randn(1, 4, 2, 1, 8), torch.randn(1, 4, 2, 1, 8), 2),
     ValueError, "must match q"),
    (lambda: (torch.randn(1, 16, 2, 8), *qkv(1, 4, 4, 2, 1, 8, torch.float32)[1:], 2), ValueError, "like q"),
])
def test_multi_axis_attention_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        fastar.ops.multi_axis_attention(*make())


def test_multi_axis_attention_binding_checks():
    """Direct torch.ops callers get named errors from the binding layer too."""
    q, k, v = qkv(1, 4, 4, 2, 1, 8, torch.float32)
    with pytest.raises(RuntimeError, match="must be a nonzero multiple of block_size 3"):
        torch.ops.fastar.multi_axis_attention_fwd(q, k, v, 3, 1.0)
    with pytest.raises(RuntimeError, match="lse must be"):
        torch.ops.fastar.multi_axis_attention_bwd(q, q, k, v, q, torch.zeros(1, 2), 2, 1.0)
