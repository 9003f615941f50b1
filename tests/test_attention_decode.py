"""Masked attention_decode (DALL-E's row / column / conv and causal): new tokens against a preallocated cache equal
the rows of the full masked attention, at every position of the grid after a text prefix."""

import pytest
import torch

import fastar
from fastar.ops import AttentionMask
from fastar.reference import attention as ref
from tests.conftest import backend_device, run_with_cpu_isa, sanitized
from tests.tolerance import assert_close

KINDS = ("causal", "row", "column", "conv")


def randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def make_mask(kind, text_len, grid, conv_kernel, key_len=None):
    if kind == "causal":
        return AttentionMask.causal(key_len=key_len)
    return AttentionMask.dalle(kind, text_len, grid, conv_kernel, key_len=key_len)


def check_positions(backend, kind, dtype, text_len, grid, conv_kernel, positions, Lq, key_len=None, B=2, H=4, Hk=2,
                    D=32):
    """Decodes the Lq tokens ending at each position p (cache_len = p + 1) of a text_len + grid^2 stream whose
    caches hold 3 rows more; compares with the rows of the full masked attention (float64 reference rule)."""
    L = text_len + grid * grid
    q = randn(B, H, L, D, dtype=dtype, seed=1)
    k_cache, v_cache = (randn(B, Hk, L + 3, D, dtype=dtype, seed=s) for s in (2, 3))
    mask = make_mask(kind, text_len, grid, conv_kernel, key_len)
    k, v = k_cache[:, :, :L], v_cache[:, :, :L]
    out64, lse64 = ref.attention(q.double(), k.double(), v.double(), mask, return_lse=True)
    out_lp, lse_lp = ref.attention(q, k, v, mask, return_lse=True)
    dev = backend_device(backend)
    qd, kd, vd = q.to(dev), k_cache.to(dev), v_cache.to(dev)
    outs, lses, rows = [], [], []
    for p in positions:
        out, lse = fastar.ops.attention_decode(qd[:, :, p - Lq + 1:p + 1], kd, vd, p + 1, mask, return_lse=True)
        outs.append(out.cpu()), lses.append(lse.cpu()), rows.extend(range(p - Lq + 1, p + 1))
    assert fastar.last_backend("attention_decode") == backend
    out, lse = torch.cat(outs, 2), torch.cat(lses, 2)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.equal(lse.isinf(), lse64[:, :, rows].isinf()), "rows that see no key differ from the reference"
    assert_close("attention", out, out64[:, :, rows], out_lp[:, :, rows])
    assert_close("attention", lse, lse64[:, :, rows], lse_lp[:, :, rows])


# Every position of a grid after a text prefix, and a few of the text, one token per step and three.
# (text_len, grid, conv_kernel): reduced (every backend) and DALL-E's 32 x 32 after 19 text tokens (the CPU).
@pytest.mark.parametrize("Lq", [1, 3])
@pytest.mark.parametrize("kind", sanitized(KINDS))
def test_attention_decode_every_position_reduced_grid(backend, dtype, kind, Lq):
    text_len, grid = 7, 8
    every = range(Lq - 1, text_len + grid * grid)
    # The emulator (and its sanitized build, 2/3 of whose time this test was): every third position, which meets
    # every column of the grid (3 and 8 coprime), with the last text token, the first of the image and of its
    # second row, and the last.
    sample = sorted({*every[::3], text_len - 1, text_len, text_len + grid, every[-1]})
    check_positions(backend, kind, dtype, text_len, grid, 5, every if backend == "cpu" else sample, Lq)


@pytest.mark.parametrize("Lq", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_decode_every_position_dalle_grid(backend, kind, Lq):
    text_len, grid = 19, 32
    every = range(Lq - 1, text_len + grid * grid)
    positions = every if backend == "cpu" else every[::37]  # the emulator: a sample spread over rows and columns
    check_positions(backend, kind, torch.float32, text_len, grid, 11, positions, Lq, H=2, Hk=1)


@pytest.mark.parametrize("D", [17, 72])
@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_attention_decode_dalle_head_dims(backend, dtype, kind, D):
    """Head dims that are not a multiple of the vector width (the CPU span kernel's last columns), across text, the
    first image row and later rows."""
    check_positions(backend, kind, dtype, 5, 6, 3, [2, 4, 5, 12, 27, 40], 1, D=D)


@pytest.mark.parametrize("kind", sanitized(KINDS))
def test_attention_decode_padded_text(backend, dtype, kind):
    """Batch rows whose valid keys end early (key_len): a padded text, and a row cut inside the image."""
    text_len, grid = 12, 8
    key_len = torch.tensor([9, 40, 76])
    positions = [3, 11, 12, 20, 39, 40, 41, 75]
    for Lq in (1, 2):
        check_positions(backend, kind, dtype, text_len, grid, 3, positions, Lq, key_len=key_len, B=3)


def test_attention_decode_full_mask_is_the_unmasked_decode():
    q, k, v = (randn(1, 2, 4, 16, dtype=torch.float32, seed=s) for s in (4, 5, 6))
    a = fastar.ops.attention_decode(q, k, v, 3, AttentionMask.full())
    assert torch.equal(a, fastar.ops.attention_decode(q, k, v, 3))


def test_attention_decode_bad_mask():
    q, k, v = randn(1, 2, 4, 16, dtype=torch.float32, seed=7), *(randn(1, 2, 9, 16, dtype=torch.float32, seed=8)
                                                                  for _ in range(2))
    with pytest.raises(TypeError, match="attention_decode: mask must be a fastar.ops.AttentionMask"):
        fastar.ops.attention_decode(q, k, v, 9, "row")
    with pytest.raises(ValueError, match="attention_decode: the 4 queries of a masked decode .* cache_len must be"):
        fastar.ops.attention_decode(q, k, v, 3, AttentionMask.dalle("row", 1, 2))
    with pytest.raises(RuntimeError, match="attention_decode: the 4 queries of a masked decode"):
        torch.ops.fastar.attention_decode(q, k, v, 3, 3, [1, 2, 11], None, None, 1.0)
    with pytest.raises(RuntimeError, match="attention_decode: mask_kind must be in"):
        torch.ops.fastar.attention_decode(q, k, v, 9, 9, [1, 2, 11], None, None, 1.0)


def cache_view(B, Hk, L, D, dtype, seed, offset, row_pad):
    """A (B, Hk, L, D) cache viewed in place at `offset` elements into its storage, rows D + row_pad apart: offsets
    and row strides that break 16-byte alignment, as a cache sliced out of a larger buffer is."""
    flat = randn(offset + B * Hk * L * (D + row_pad), dtype=dtype, seed=seed)
    return flat[offset:].view(B, Hk, L, D + row_pad)[..., :D]


# Head dims of HiT (40, 80, 96: its 2-4 heads of 160-384 channels), DALL-E-like 72, odd ones (no 16-byte rows), and
# one the kernels are built for; storage offsets and row paddings (elements) that misalign rows.
@pytest.mark.parametrize("D", [40, 72, 80, 96, 17, 64])
@pytest.mark.parametrize("offset, row_pad", [(0, 0), (1, 0), (0, 3), (8, 8)])
@pytest.mark.parametrize("backend", ["cpu", "simt", "cuda"], indirect=True)
def test_attention_decode_reads_the_cache_in_place(backend, dtype, D, offset, row_pad):
    """Any head dim up to the kernels' and any row alignment: the decode reads the cache where it is (no padded or
    aligned copy: the device glue's copy counter stays put; the CPU's 16-bit reads:
    test_attention_decode_reads_16_bit_caches_in_place) and matches the float64 reference."""
    B, H, Hk, Lmax, cache_len, Lq = 2, 4, 2, 80, 70, 2  # cache_len > 32: the tiled kernel, not the tiny one
    dev = backend_device(backend)
    q = randn(B, H, Lq, D, dtype=dtype, seed=11)
    k_cache = cache_view(B, Hk, Lmax, D, dtype, 12, offset, row_pad)
    v_cache = cache_view(B, Hk, Lmax, D, dtype, 13, offset, row_pad)
    mask = AttentionMask.causal()
    k, v = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]
    out64, lse64 = ref.attention(q.double(), k.double(), v.double(), mask, return_lse=True)
    out_lp, lse_lp = ref.attention(q, k, v, mask, return_lse=True)
    copies = fastar._backend._simt.attention_operand_copies if backend == "simt" else None
    before = copies() if copies else 0
    out, lse = fastar.ops.attention_decode(q.to(dev), k_cache.to(dev), v_cache.to(dev), cache_len, mask,
                                           return_lse=True)
    if copies:
        assert copies() == before, "the decode copied q, k or v"
    assert fastar.last_backend("attention_decode") == backend
    assert out.shape == (B, H, Lq, D) and out.dtype == dtype
    assert_close("attention", out.cpu(), out64, out_lp)
    assert_close("attention", lse.cpu(), lse64, lse_lp)


@pytest.mark.parametrize("backend", ["simt"], indirect=True)
def test_attention_copy_counter_sees_the_forward_pad(backend):
    """The counter the in-place test relies on counts: the forward still pads a head dim of 40 to 64."""
    q, k, v = (randn(1, 2, 40, 40, dtype=torch.float32, seed=s) for s in (14, 15, 16))
    before = fastar._backend._simt.attention_operand_copies()
    fastar.ops.attention(q, k, v)
    assert fastar._backend._simt.attention_operand_copies() >= before + 3


HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# A one-key decode returns its value row exactly (softmax of one score is 1): q and k zero, every 16-bit pattern in v.
EVERY_HALF = """
import torch, fastar
dtype = getattr(torch, {name!r})
v = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, 1024, 1, 64).to({dev!r})
out = fastar.ops.attention_decode(torch.zeros_like(v), torch.zeros_like(v), v, 1, None)
assert fastar.last_backend("attention_decode") == {backend!r}
wrong = ~((out == v) | (out.isnan() & v.isnan()))
assert not wrong.any(), (f"{{int(wrong.sum())}} values changed, e.g. {{v[wrong][:4].tolist()}} -> "
                        f"{{out[wrong][:4].tolist()}}")
"""


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_attention_decode_every_16_bit_value(backend, name):
    """Every bfloat16 / float16 bit pattern (subnormals, infinities, NaN) read from a cache comes out as it was: the
    CPU span kernel widens 16-bit caches as it loads them (float16 by the conversion instruction on AVX-512 and
    F16C, by integer operations on SSE2)."""
    exec(EVERY_HALF.format(name=name, dev=str(backend_device(backend)), backend=backend), {})


@pytest.mark.parametrize("isa", ["avx2", "base"])
@pytest.mark.parametrize("name", HALF_DTYPES)
def test_attention_decode_every_16_bit_value_per_isa(isa, name):
    """The same through the AVX2 (F16C) and SSE2 (integer) widening of the span kernel."""
    run_with_cpu_isa(isa, EVERY_HALF.format(name=name, dev="cpu", backend="cpu"))


@pytest.mark.parametrize("kind", ["row", "conv", "causal"])
@pytest.mark.parametrize("name", HALF_DTYPES)
def test_attention_decode_reads_16_bit_caches_in_place(name, kind):
    """On the CPU a token's decode reads a bfloat16 / float16 cache in place (half the bytes of float32): no
    conversion of the cache runs (torch's profiler sees no copy of its shape), and the result matches the float64
    reference by the rule of the 16-bit reference."""
    dtype, (B, H, D, text_len, grid) = HALF_DTYPES[name], (2, 4, 64, 9, 6)
    L = text_len + grid * grid
    k_cache, v_cache = (randn(B, H, L + 5, D, dtype=dtype, seed=s) for s in (21, 22))
    q = randn(B, H, 1, D, dtype=dtype, seed=23)
    mask = make_mask(kind, text_len, grid, 3)
    p = L - 8  # a token of the image's last rows
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        out = fastar.ops.attention_decode(q, k_cache, v_cache, p + 1, mask)
    assert fastar.last_backend("attention_decode") == "cpu"
    copies = [(e.name, e.input_shapes) for e in prof.events() if e.name in ("aten::_to_copy", "aten::copy_")
              and any(len(s) == 4 and s[2] >= p for s in e.input_shapes)]
    assert not copies, f"the decode copied its cache: {copies}"
    k, v = k_cache[:, :, :p + 1], v_cache[:, :, :p + 1]
    full = ref.attention(torch.cat([k[:, :, :p], q], 2).double(), k.double(), v.double(), mask)[:, :, -1:]
    full_lp = ref.attention(torch.cat([k[:, :, :p], q], 2), k, v, mask)[:, :, -1:]
    assert_close("attention", out, full, full_lp)
