"""What a real GPU refuses or faults on and the emulator now catches too (issue 16): the backward's shared memory
against the device's opt-in limit, 16-byte loads from a misaligned contiguous view, and the grid's 65,535 rows."""

import pytest
import torch

import fastar
from tests.conftest import sanitized
from tests.test_attention import check, make_mask, randn

# Opt-in dynamic shared memory per block: sm_86 / sm_89 / sm_120 (the emulator's default), A100, H100.
SMEM_LIMITS = {"rtx4090": 101376, "a100": 166912, "h100": 232448}


@pytest.fixture
def simt():
    """fastar._simt (skips without it) with its shared memory limit restored afterwards."""
    simt = pytest.importorskip("fastar._simt")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fastar_simt::attention_bwd", "CPU"):
        pytest.skip("fastar_simt has no attention kernel")
    previous = simt.set_max_smem(SMEM_LIMITS["rtx4090"])
    simt.set_max_smem(previous)
    assert previous == SMEM_LIMITS["rtx4090"], "the emulator's default is the smallest supported chip's"
    with fastar.use_backend("simt"):
        yield simt
    simt.set_max_smem(previous)


# The float32 backward used to ask 104,960 B (D 64) and 120,064 B (D 128): refused on an RTX 4090, so the op
# raised there; it now picks the tile that fits, with the same results.
@pytest.mark.parametrize("chip", sanitized(list(SMEM_LIMITS), {"rtx4090"}))
@pytest.mark.parametrize("D", [64, 128])
def test_attention_bwd_fits_the_device_shared_memory(simt, chip, D):
    simt.set_max_smem(SMEM_LIMITS[chip])
    q, k, v = (randn(1, 2, 70, D, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    check(q, k, v, make_mask("causal", 70), "simt")


def test_attention_bwd_without_shared_memory_for_any_tile_says_so(simt):
    q, k, v = (randn(1, 1, 8, 128, dtype=torch.bfloat16, seed=s).requires_grad_() for s in (1, 2, 3))
    out, lse = torch.ops.fastar_simt.attention_fwd(q, k, v, 0, [0, 0, 0], None, None, 0.1)  # 52,224 B
    simt.set_max_smem(48 * 1024)  # below even the 16-bit backward tile at D 128
    with pytest.raises(RuntimeError, match=r"attention_bwd: its kernel needs \d+ bytes of shared memory per block, "
                                           r"the device allows 49152"):
        torch.ops.fastar_simt.attention_bwd(out, q, k, v, out, lse, 0, [0, 0, 0], None, None, 0.1)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_bwd_misaligned_contiguous_views(simt, dtype):
    """q and dout as contiguous views one element into a buffer (forward and backward): 16-byte loads there fault
    on a GPU (the emulator reports them); the glue copies such a view."""
    B, H, L, D = 1, 2, 40, 32
    n = B * H * L * D
    q = randn(n + 1, dtype=dtype, seed=5)[1:].view(B, H, L, D)
    assert q.is_contiguous() and q.data_ptr() % 16
    k, v = (randn(B, H, L, D, dtype=dtype, seed=s) for s in (6, 7))
    check(q, k, v, make_mask("full", L), "simt")
    out, lse = torch.ops.fastar_simt.attention_fwd(q, k, v, 0, [0, 0, 0], None, None, 0.2)
    dout = randn(n + 1, dtype=dtype, seed=8)[1:].view(B, H, L, D)
    dq, dk, dv = torch.ops.fastar_simt.attention_bwd(dout, q, k, v, out, lse, 0, [0, 0, 0], None, None, 0.2)
    dq2, dk2, dv2 = torch.ops.fastar_simt.attention_bwd(dout.clone(), q.clone(), k, v, out, lse, 0, [0, 0, 0], None,
                                                        None, 0.2)
    assert torch.equal(dq, dq2) and torch.equal(dk, dk2) and torch.equal(dv, dv2)


def test_attention_bwd_grid_limit(simt):
    """Lq past 65,535 query tiles (the tile flags' gridDim.y) is refused with a message, before any allocation:
    stride-0 views keep this test small."""
    Lq, D = 65535 * 64 + 1, 32
    q = torch.zeros(1, 1, 1, D, dtype=torch.bfloat16).expand(1, 1, Lq, D)
    k = v = torch.zeros(1, 1, 1, D, dtype=torch.bfloat16)
    lse = torch.zeros(1, 1, 1).expand(1, 1, Lq)
    with pytest.raises(RuntimeError, match="must stay within 65535 tiles"):
        torch.ops.fastar_simt.attention_bwd(q, q, k, v, q, lse, 0, [0, 0, 0], None, None, 1.0)
