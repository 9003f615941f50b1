"""Masked attention_decode (DALL-E's row / column / conv and causal): new tokens against a preallocated cache equal
the rows of the full masked attention, at every position of the grid after a text prefix."""

import pytest
import torch

import fastar
from fastar.ops import AttentionMask
from fastar.reference import attention as ref
from tests.conftest import backend_device, sanitized
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
    check_positions(backend, kind, dtype, text_len, grid, 5, range(Lq - 1, text_len + grid * grid), Lq)


@pytest.mark.parametrize("Lq", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_decode_every_position_dalle_grid(backend, kind, Lq):
    text_len, grid = 19, 32
    every = range(Lq - 1, text_len + grid * grid)
    positions = every if backend == "cpu" else every[::37]  # the emulator: a sample spread over rows and columns
    check_positions(backend, kind, torch.float32, text_len, grid, 11, positions, Lq, H=2, Hk=1)


@pytest.mark.parametrize("kind", sanitized(KINDS))
def test_attention_decode_padded_text(backend, kind):
    """Batch rows whose valid keys end early (key_len): a padded text, and a row cut inside the image."""
    text_len, grid = 12, 8
    key_len = torch.tensor([9, 40, 76])
    positions = [3, 11, 12, 20, 39, 40, 41, 75]
    for Lq in (1, 2):
        check_positions(backend, kind, torch.float32, text_len, grid, 3, positions, Lq, key_len=key_len, B=3)


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
