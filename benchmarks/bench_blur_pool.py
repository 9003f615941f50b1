"""blur_pool (BlurPool2D) at the first block of HiT's StyleGAN2 discriminator against the official formulation
(F.pad + depthwise F.conv2d with the 4x4 binomial, the torch backend): the forward, and R1's pattern, the forward,
its backward with create_graph and that backward's own backward (the R1 penalty's double backward; autograd's
depthwise convolution then also computes, channel by channel, a gradient of the fixed filter). float32. Each row
reports the max abs diff of the baseline's results (the forward's output; R1's: the backward's and the double
backward's gradients) to fastar's, from one more call of each before the timed rounds."""
import pytest
import torch

import fastar
from benchmarks.harness import compare, max_abs_diff

# (B, C, H, W): HiT-256's discriminator at 256 x 256 (64 channels) and HiT-128's at 128 x 128 (128 channels),
# a batch of 4 reals (R1 runs on the reals)
SHAPES = [(4, 64, 256, 256), (4, 128, 128, 128)]
BASELINE = "depthwise F.conv2d (official, torch backend)"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("r1", [False, True], ids=["forward", "R1 double backward"])
def test_blur_pool(benchmark, shape, r1):
    B, C, H, W = shape
    what = "forward, backward (create_graph), double backward" if r1 else "forward"
    benchmark.group = f"blur_pool {what} HiT discriminator {B} x {C} x {H} x {W} float32"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    dy, ddx = torch.randn(B, C, H // 2, W // 2, generator=g), torch.randn(shape, generator=g)

    def run(backend):
        def go():
            with fastar.use_backend(backend):
                if not r1:
                    return fastar.ops.blur_pool(x)
                xr, dyr = x.requires_grad_(), dy.requires_grad_()
                (dx,) = torch.autograd.grad(fastar.ops.blur_pool(xr), xr, dyr, create_graph=True)
                return [dx, torch.autograd.grad(dx, dyr, ddx)[0]]
        return go

    diff = max_abs_diff(run("cpu")(), run("torch")())
    compare(benchmark, run("cpu"), {BASELINE: run("torch")}, baseline=BASELINE, rounds=7, op="blur_pool",
            shape=f"{B} x {C} x {H} x {W}", max_abs_diff={BASELINE: diff})
