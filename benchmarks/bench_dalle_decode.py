"""attention_decode under DALL-E's masks: one image token against 256 text + 1024 image keys cached, per layer kind.
Baseline: SDPA over the same cache prefix with the new token's dense mask row (the torch backend), what ru-dalle and
DALLE-pytorch's static-mask layers run; extra column: the float64-capable reference. For column layers also
OpenAI's transpose trick: the image cache kept column-major so a column is contiguous keys (text and column then
two spans, masked as a row-like window of the transposed grid by slicing), against the direct strided column.
Shapes: FASTAR_BENCH_DALLE_DECODE="B,H,D" (default 4,16,64)."""
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl
from fastar.ops import AttentionMask
from fastar.reference import attention as ref

BASELINE = "SDPA over the prefix, dense mask row (torch backend)"
B, H, D = (int(x) for x in os.environ.get("FASTAR_BENCH_DALLE_DECODE", "4,16,64").split(","))
TEXT, GRID = 256, 32
# The new token (the cache holds everything before it): row 20, column 17 of the image, and the image's last token
# (all 256 + 1024 keys cached). The caches of the other layers run between two calls of a layer, so each call reads
# its keys from memory: the ratio to SDPA is then about the bytes ratio, cache_len / visible keys (the rounds
# interleave the contenders, which keeps it so here).
POSITIONS = {"row 20 col 17": (20, 17), "last token": (GRID - 1, GRID - 1)}


def caches():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g)
    k_cache, v_cache = (torch.randn(B, H, TEXT + GRID * GRID, D, generator=g) for _ in range(2))
    return q, k_cache, v_cache


@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("kind", ["row", "conv", "column"])
def test_dalle_decode(benchmark, kind, where, peak_gflops):
    row, col = POSITIONS[where]
    position = TEXT + row * GRID + col
    benchmark.group = (f"attention_decode DALL-E {kind} B={B} H={H} D={D} {TEXT}+{GRID * GRID} cache, one token "
                       f"({where})")
    q, k_cache, v_cache = caches()
    mask = AttentionMask.dalle(kind, TEXT, GRID)
    cache_len = position + 1
    contenders = {
        BASELINE: lambda: torch_impl.attention.attention_decode(q, k_cache, v_cache, cache_len, mask),
        "reference": lambda: ref.attention_decode(q, k_cache, v_cache, cache_len, mask),
    }
    ours = fastar.ops.attention_decode(q, k_cache, v_cache, cache_len, mask)
    if kind == "column":  # the transpose trick: column col's keys contiguous in a column-major image cache
        k_t, v_t = (torch.cat([c[:, :, :TEXT], c[:, :, TEXT:].unflatten(2, (GRID, GRID)).transpose(2, 3)
                               .flatten(2, 3)], 2).contiguous() for c in (k_cache, v_cache))
        # text, then rows 0..row of column col: a full attention over two gathered spans
        start = TEXT + col * GRID

        def transposed():
            return fastar.ops.attention(q, torch.cat([k_t[:, :, :TEXT], k_t[:, :, start:start + row + 1]], 2),
                                        torch.cat([v_t[:, :, :TEXT], v_t[:, :, start:start + row + 1]], 2))
        assert (transposed() - ours).abs().max().item() < 1e-4
        contenders["fastar transpose trick (column-major cache)"] = transposed
    max_diff = {name: (fn() - ours).abs().max().item() for name, fn in contenders.items()}
    visible = int(ref.dense_mask(mask, 1, cache_len).sum())
    f = 4 * B * H * visible * D
    # 50 rounds of a millisecond: the min finds a quiet moment on a loaded machine
    compare(benchmark, lambda: fastar.ops.attention_decode(q, k_cache, v_cache, cache_len, mask), contenders,
            baseline=BASELINE, op="attention_decode", rounds=50, shape=f"{kind} B={B} H={H} D={D} {where}",
            max_abs_diff=max_diff, visible_keys=visible, cached_keys=cache_len, gflop=f / 1e9,
            fma_floor_ms=f / peak_gflops / 1e6)
