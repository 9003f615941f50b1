"""attention_decode under DALL-E's masks: one image token against 256 text + 1024 image keys cached, per layer kind.
Baseline: SDPA over the same cache prefix with the new token's dense mask row (the torch backend), what ru-dalle and
DALLE-pytorch's static-mask layers run; extra column: the float64-capable reference. For column layers also
OpenAI's transpose trick: the image cache kept column-major so a column is contiguous keys (text and column then
two spans, masked as a row-like window of the transposed grid by slicing), against the direct strided column.
Caches of bfloat16 and float16 (DALL-E ran in float16): fastar reads them in place, half the bytes of float32. Their
baseline is SDPA on the float32 caches (the float32 model's; on the CPU faster than SDPA on 16-bit ones, also timed),
so their ratio counts the storage and the kernel together.
Shapes: FASTAR_BENCH_DALLE_DECODE="B,H,D" (default 4,16,64)."""
import itertools
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl
from fastar.ops import AttentionMask
from fastar.reference import attention as ref

BASELINE = "SDPA over the prefix, dense mask row (torch backend)"
BASELINE_FP32 = "SDPA over the prefix, dense mask row, float32 caches (torch backend)"
CACHES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
B, H, D = (int(x) for x in os.environ.get("FASTAR_BENCH_DALLE_DECODE", "4,16,64").split(","))
TEXT, GRID = 256, 32
# The new token (the cache holds everything before it): row 20, column 17 of the image, and the image's last token
# (all 256 + 1024 keys cached). In sampling the other layers run between two calls of a layer, so each call reads
# its keys from memory: here each call takes the next of LAYERS layers' caches (42 MB each at the default shape,
# past a 32 MB L3), on every contender alike; the ratio to SDPA is then about the bytes ratio, cache_len / visible
# keys. (One cache called in a loop stayed in L3 for fastar's visible keys only: 1.3-2x more.)
POSITIONS = {"row 20 col 17": (20, 17), "last token": (GRID - 1, GRID - 1)}
LAYERS = 12  # DALL-E-small's


def caches():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g)
    return q, [tuple(torch.randn(B, H, TEXT + GRID * GRID, D, generator=g) for _ in range(2)) for _ in range(LAYERS)]


def rotating(fn, layers):
    """fn(k_cache, v_cache) on the next layer's caches at each call."""
    turn = itertools.cycle(layers)
    return lambda: fn(*next(turn))


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("kind", ["row", "conv", "column"])
def test_dalle_decode(benchmark, kind, where, cache, peak_gflops):
    row, col = POSITIONS[where]
    position = TEXT + row * GRID + col
    dtype = CACHES[cache]
    benchmark.group = (f"attention_decode DALL-E {kind} B={B} H={H} D={D} {TEXT}+{GRID * GRID} {cache} cache, one "
                       f"token ({where}), {LAYERS} layers' caches in turn")
    q32, layers32 = caches()
    q, layers = q32.to(dtype), [tuple(c.to(dtype) for c in kv) for kv in layers32]
    mask = AttentionMask.dalle(kind, TEXT, GRID)
    cache_len = position + 1
    sdpa = lambda q: lambda k, v: torch_impl.attention.attention_decode(q, k, v, cache_len, mask)  # noqa: E731
    if dtype == torch.float32:
        funcs = {BASELINE: sdpa(q), "reference": lambda k, v: ref.attention_decode(q, k, v, cache_len, mask)}
        inputs, baseline = {name: layers for name in funcs}, BASELINE
    else:
        funcs = {BASELINE_FP32: sdpa(q32), f"SDPA on the {cache} caches (torch backend)": sdpa(q)}
        inputs, baseline = dict(zip(funcs, (layers32, layers))), BASELINE_FP32
    fastar_fn = lambda k, v: fastar.ops.attention_decode(q, k, v, cache_len, mask)  # noqa: E731
    ours = fastar_fn(*layers[0]).float()
    if kind == "column" and dtype == torch.float32:  # the transpose trick: column col's keys contiguous
        transposed_layers = [tuple(torch.cat([c[:, :, :TEXT], c[:, :, TEXT:].unflatten(2, (GRID, GRID))
                                              .transpose(2, 3).flatten(2, 3)], 2).contiguous() for c in kv)
                             for kv in layers]
        # text, then rows 0..row of column col: a full attention over two gathered spans
        start = TEXT + col * GRID

        def transposed(k_t, v_t):
            return fastar.ops.attention(q, torch.cat([k_t[:, :, :TEXT], k_t[:, :, start:start + row + 1]], 2),
                                        torch.cat([v_t[:, :, :TEXT], v_t[:, :, start:start + row + 1]], 2))
        name = "fastar transpose trick (column-major cache)"
        funcs[name], inputs[name] = transposed, transposed_layers
    contenders = {name: rotating(fn, inputs[name]) for name, fn in funcs.items()}
    outs = {name: fn(*inputs[name][0]).float() for name, fn in funcs.items()}
    max_diff = {name: (out - ours).abs().max().item() for name, out in outs.items()}
    if dtype == torch.float32:
        assert max(max_diff.values()) < 1e-4, f"a contender computes something else: max abs diffs {max_diff}"
    else:  # ours, from the 16-bit cache in float32, within twice SDPA-on-16-bit's distance from the float32 result
        truth, sdpa16 = outs.values()
        bound = 2 * (sdpa16 - truth).abs().max().item()
        assert max_diff[BASELINE_FP32] <= bound, f"the 16-bit decode is off: {max_diff}, bound {bound}"
    visible = int(ref.dense_mask(mask, 1, cache_len).sum())
    f = 4 * B * H * visible * D
    # 50 rounds of a millisecond: the min finds a quiet moment on a loaded machine
    compare(benchmark, rotating(fastar_fn, layers), contenders,
            baseline=baseline, op="attention_decode", rounds=50,
            shape=f"{kind} B={B} H={H} D={D} {where} {cache} cache", max_abs_diff=max_diff, visible_keys=visible,
            cached_keys=cache_len, cache_dtype=cache, gflop=f / 1e9, fma_floor_ms=f / peak_gflops / 1e6)
