"""conv3x3 (Winograd F(2x2, 3x3)) at the VQVAE and KL-16 decoders' shapes against F.conv2d as the official decoders
call it (NCHW: oneDNN's direct convolution, the torch backend) and F.conv2d in channels_last (oneDNN's fastest
layout here, which the decoders do not use: it costs a layout change each way and its float32 error failed the
decoder's rule, fastar/models/var/basic_vae.py); the note gives each contender's error against float64 over
F.conv2d NCHW's (the tolerance rule's ratio). The share of peak counts the Winograd products' multiply-adds
(16 C_in C_out per 2x2 tile), not the direct convolution's 2.25x more."""
import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare, error_note, kept

# (name, B, C_in, C_out, side)
SHAPES = [("VQVAE up[0] (side/1, 160 ch)", 4, 160, 160, 256), ("VQVAE up[2] (side/4, 320 ch)", 4, 320, 320, 64),
          ("VQVAE mid (side/16, 640 ch)", 4, 640, 640, 16), ("KL-16 up[0] (side/1, 128 ch)", 1, 128, 128, 256)]
BASELINE = "F.conv2d NCHW (torch backend)"


@pytest.mark.parametrize("name, B, Ci, Co, side", SHAPES, ids=[s[0] for s in SHAPES])
def test_conv3x3(benchmark, name, B, Ci, Co, side, peak_gflops):
    benchmark.group = f"conv3x3 {name} B={B} {side}x{side} float32"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, Ci, side, side, generator=g)
    w, b = torch.randn(Co, Ci, 3, 3, generator=g) / (9 * Ci) ** 0.5, torch.randn(Co, generator=g)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    outs = {}
    contenders = {BASELINE: kept(outs, BASELINE, lambda: F.conv2d(x, w, b, padding=1)),
                  "F.conv2d channels_last": kept(outs, "F.conv2d channels_last",
                                                 lambda: F.conv2d(x_cl, w_cl, b, padding=1))}
    tiles = B * ((side + 1) // 2) ** 2
    f = 2 * 16 * tiles * Ci * Co / 1e9
    compare(benchmark, kept(outs, "fastar", lambda: fastar.ops.conv3x3(x, w, b)), contenders, baseline=BASELINE,
            rounds=3, op="conv3x3", gflop=f, fma_floor_ms=f / peak_gflops * 1e3)
    # the errors on the first image: the float64 convolution of the whole batch took ~11 s of the row's ~19 s (B 4,
    # 160 ch, 256 x 256; AVX2)
    ref64 = F.conv2d(x[:1].double(), w.double(), b.double(), padding=1)
    benchmark.extra_info["note"] = error_note({k: v[:1] for k, v in outs.items()}, ref64, BASELINE,
                                              "F.conv2d NCHW's, on the batch's first image")
