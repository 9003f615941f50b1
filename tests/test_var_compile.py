"""VAR's KV-cache sampling is graph-capturable per scale (issue 17's CUDA item, checked on the CPU build): one
scale's transformer step (every block: AdaLN, qkv, q/k normalisation, the cache append, fastar.ops.attention_decode,
the FFN) traced by torch.compile(fullgraph=True), i.e. with no graph break and no host sync (an .item() or a
data-dependent branch would break the graph), at three scales and in both sampling precisions.

The one write Dynamo cannot trace (torch.mul(..., out=) into the keys' non-contiguous cache slot) is a copy under
torch.compile (basic_var.unit); the compiled step gives the eager step's results.
"""
import pytest
import torch

from fastar.models.var import basic_var
from fastar.models.var.var import with_gemm_dtype
from tests.test_var_model import TINY_PN, tiny

pytestmark = pytest.mark.one_schedule


def scale_step(var, dtype, B=2):
    """step(x_BLC) running every block on x with KV caches that grow by x's length per call (a scale)."""
    cond = var.class_emb(torch.tensor([1, 2, 10, 10][:2 * B]))
    ada = [b.ada(cond) for b in var.blocks]
    blocks = [with_gemm_dtype(b, dtype) for b in var.blocks]
    caches = [basic_var.KVCache(2 * B, b.attn.num_heads, var.L, b.attn.head_dim, like=cond.to(dtype))
              for b in var.blocks]

    def step(x_BLC):
        for b, ada_B16C, cache in zip(blocks, ada, caches):
            x_BLC = b(x_BLC, ada_B16C, cache=cache)
        return x_BLC
    return step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.no_grad()
def test_one_scale_step_compiles_fullgraph(dtype, monkeypatch):
    # Under torch.compile the models' float32 Linear runs F.linear (layers.onednn_declines: inductor has no lowering
    # for an unpacked oneDNN linear), so the eager steps run F.linear too, for results equal to the bit.
    monkeypatch.setenv("FASTAR_FP32_GEMM", "mkl")
    _, var = tiny()
    xs = [torch.randn(4, pn * pn, var.C, generator=torch.Generator().manual_seed(pn)) for pn in TINY_PN[:3]]
    eager = scale_step(var, dtype)
    expected = [eager(x) for x in xs]
    compiled = torch.compile(scale_step(var, dtype), fullgraph=True, backend="eager")
    for x, want in zip(xs, expected):
        assert torch.equal(compiled(x), want)
    torch._dynamo.reset()
