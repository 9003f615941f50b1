"""transformer_decode (a stack of pre-norm blocks decoding new tokens on KV caches, one call) on every backend:
against the float64 reference within the tolerance rule (its output and the cache entries it writes), DALL-E's row /
column / conv masks and causal / full, one or a few new tokens, float64, bfloat16 product weights; bit for bit the
DALL-E model's module-by-module decode step; the caches' version counts; the torch backend; opcheck; bad inputs
named."""
import pytest
import torch

import fastar
from fastar.models.dalle import DALLE, DALLEConfig
from fastar.models.dalle.dalle import KVCache
from fastar.ops import AttentionMask
from fastar.reference import transformer_decode as ref
from tests.conftest import backend_device, sanitized
from tests.tolerance import assert_close

TEXT, GRID = 3, 4  # a text prefix of 3 positions, then a 4 x 4 image grid: 19 positions
DALLE_MASKS = [AttentionMask.dalle(kind, TEXT, GRID, 3) for kind in ("row", "column", "row", "conv")]
OTHER_MASKS = [AttentionMask.causal(), None]


def randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


SHAPES = {"gpt2": lambda C, F: [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (F, C), (F,), (C, F), (C,)],
          "llama": lambda C, F: [(C,), (3 * C, C), (C, C), (C,), (F, C), (F, C), (C, F)]}
NORMS = {"gpt2": (0, 6), "llama": (0, 3)}  # the norms' gains, near 1


def products(block):
    return [j for j, s in enumerate(SHAPES[block](2, 3)) if len(s) == 2]


def stack(n, C, F, seed, block="gpt2"):
    """n layers' tensors (reference BLOCKS[block] order), norm gains near 1."""
    return [[randn(*s, seed=seed + 16 * i + j) * (0.3 if len(s) == 2 else 0.1) + (1 if j in NORMS[block] else 0)
             for j, s in enumerate(SHAPES[block](C, F))] for i in range(n)]


def rope_table(L, D, seed):
    angles = randn(L, D // 2, seed=seed) * 3
    return torch.stack([angles.cos(), angles.sin()], -1)


def run(backend, masks, B, L, cache_len, dtype, *, heads=4, C=32, F=64, weights=None, block="gpt2", rope=False,
        caches_dtype=None):
    """(fastar's x, k caches, v caches), (the float64 reference's), (the reference's in dtype). caches_dtype: 16-bit
    caches for fastar and the reference in dtype; the float64 reference starts from the same rounded entries."""
    dev = backend_device(backend)
    n, Lmax, D = len(masks), TEXT + GRID * GRID, C // heads
    layers, prods = stack(n, C, F, seed=1, block=block), products(block)
    x = randn(B, L, C, seed=2)
    table = rope_table(L, D, seed=60) if rope else None
    caches = [(randn(B, heads, Lmax, D, seed=3 + i), randn(B, heads, Lmax, D, seed=40 + i)) for i in range(n)]
    results = []
    for where, dt, fn in ((dev, dtype, fastar.ops.transformer_decode), ("cpu", torch.float64, ref.transformer_decode),
                          ("cpu", dtype, ref.transformer_decode)):
        cdt = caches_dtype or dt
        ks, vs = ([c[i].to(cdt).to(where, dt if dt == torch.float64 else cdt) for c in caches] for i in (0, 1))
        ws = [[t.to(where, weights if weights is not None and j in prods and where == dev else dt)
               for j, t in enumerate(w)] for w in layers]
        if weights is not None and where != dev:  # the references read the same rounded product weights
            ws = [[t.to(weights).to(dt) if j in prods else t for j, t in enumerate(w)] for w in ws]
        out = fn(x.to(where, dt), ws, ks, vs, cache_len, masks, heads=heads, block=block,
                 rope=None if table is None else table.to(where, dt))
        results.append((out, ks, vs))
        if fn is fastar.ops.transformer_decode:
            assert fastar.last_backend("transformer_decode") == backend
    return results


def check(results):
    (out, ks, vs), (out64, ks64, vs64), (out_lp, ks_lp, vs_lp) = results
    assert_close("transformer_decode", out, out64, out_lp)
    for got, want, lp in zip(ks + vs, ks64 + vs64, ks_lp + vs_lp):  # every layer's written entries, the rest kept
        assert_close("transformer_decode", got, want, lp)


# (masks, B, L, cache_len): one image token (first image row, mid grid, last), two and three new tokens (a row's
# end and the next row's start), text positions, causal and full masks; B 1 and 3
CASES = [("dalle", 2, 1, 5), ("dalle", 1, 1, 12), ("dalle", 3, 1, 18), ("dalle", 2, 2, 9), ("dalle", 1, 3, 5),
         ("dalle", 2, 1, 1), ("other", 2, 1, 7), ("other", 1, 3, 0)]


@pytest.mark.parametrize("case", sanitized(CASES, {("dalle", 2, 2, 9), ("other", 2, 1, 7)}), ids=str)
def test_matches_reference(backend, case):
    kind, B, L, cache_len = case
    check(run(backend, DALLE_MASKS if kind == "dalle" else OTHER_MASKS, B, L, cache_len, torch.float32))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float64_on_the_cpu(case):
    """float64 (the CPU kernels' test dtype) against its own reference; the device kernels refuse it by name."""
    kind, B, L, cache_len = case
    with fastar.use_backend("cpu"):
        check(run("cpu", DALLE_MASKS if kind == "dalle" else OTHER_MASKS, B, L, cache_len, torch.float64))


@pytest.mark.parametrize("backend", ["simt", "cuda"], indirect=True)
def test_device_refuses_float64(backend):
    with pytest.raises(RuntimeError, match="x must be float32 on .*float64 runs on the CPU"):
        run(backend, DALLE_MASKS, 1, 1, 5, torch.float64)


@pytest.mark.parametrize("case", sanitized(CASES[:5] + CASES[6:], {("other", 2, 1, 7)}), ids=str)
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no_rope"])
def test_llama_blocks(backend, case, rope):
    """RMSNorm, RoPE on q and k (interleaved pairs), SwiGLU, no biases (FractalGen's AR levels, LlamaGen)."""
    kind, B, L, cache_len = case
    check(run(backend, DALLE_MASKS if kind == "dalle" else OTHER_MASKS, B, L, cache_len, torch.float32,
              block="llama", rope=rope, F=48))


def test_llama_float64_and_bfloat16_weights():
    with fastar.use_backend("cpu"):
        check(run("cpu", OTHER_MASKS, 2, 2, 5, torch.float64, block="llama", rope=True))
        check(run("cpu", OTHER_MASKS, 2, 1, 5, torch.float32, block="llama", rope=True, weights=torch.bfloat16))


def test_bfloat16_product_weights(backend):
    """float32 x with the four products' weights in bfloat16 (decode_weights): the products of the widened weights."""
    check(run(backend, DALLE_MASKS, 2, 1, 10, torch.float32, weights=torch.bfloat16))


@pytest.mark.parametrize("caches_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_caches(backend, caches_dtype):
    """float32 x over bfloat16 / float16 caches (DALL-E's generate(cache_dtype=...)): this step's keys and values are
    written rounded, the queries meet them in the caches' dtype; against the reference doing the same."""
    check(run(backend, DALLE_MASKS, 2, 1, 10, torch.float32, caches_dtype=caches_dtype))
    check(run(backend, OTHER_MASKS, 1, 3, 5, torch.float32, caches_dtype=caches_dtype))


def test_head_dim_past_the_vector_width(backend):
    """Head dim 24 (off the 16-float vectors), 2 heads, F 40."""
    check(run(backend, DALLE_MASKS[:2], 2, 1, 8, torch.float32, heads=2, C=48, F=40))


def test_cache_writes_count_as_in_place_changes(backend):
    """The kernels run below autograd (no Python round trip per product), the cache writes not: every cache's version
    advances, so a backward that saved a cache before a decode step is refused, not silently wrong."""
    dev = backend_device(backend)
    masks, heads, C, F = DALLE_MASKS[:2], 4, 32, 64
    layers = [[t.to(dev, torch.float32) for t in w] for w in stack(len(masks), C, F, seed=1)]
    ks, vs = ([randn(1, heads, TEXT + GRID * GRID, C // heads, seed=s + i, dtype=torch.float32).to(dev)
               for i in range(len(masks))] for s in (3, 40))
    w = randn(C // heads, seed=7, dtype=torch.float32).to(dev).requires_grad_()
    saved = (ks[0] * w).sum()  # autograd saves ks[0] for w's gradient
    before = [t._version for t in ks + vs]
    with torch.no_grad():
        fastar.ops.transformer_decode(randn(1, 1, C, seed=2, dtype=torch.float32).to(dev), layers, ks, vs, 5, masks,
                                      heads=heads)
    assert all(t._version > v for t, v in zip(ks + vs, before))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_torch_backend_runs_the_reference_loop():
    """The torch backend: the same loop on F.linear and SDPA, within the rule of the reference."""
    with fastar.use_backend("torch"):
        results = run("torch", DALLE_MASKS, 2, 1, 10, torch.float32)
    check(results)


def test_equals_the_dalle_blocks_bit_for_bit():
    """The DALL-E model's decode step through its modules (Block.forward: the same linear and attention_decode
    kernels, ATen's LayerNorm and GELU) and through transformer_decode give the same bits, caches included."""
    torch.manual_seed(0)
    cfg = DALLEConfig(width=64, depth=4, heads=2, text_vocab=40, text_len=6, image_vocab=32, grid=4, conv_kernel=3)
    model = DALLE(cfg).eval()
    L = cfg.text_len + 1 + cfg.grid ** 2
    caches = [[KVCache(2, 2, L, 32, model.bos) for _ in model.blocks] for _ in range(2)]
    for a, b in zip(*caches):
        a.k.copy_(torch.randn_like(a.k)), a.v.copy_(torch.randn_like(a.v))
        b.k.copy_(a.k), b.v.copy_(a.v)
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        for step, n in enumerate(range(10, 14)):
            y = x
            for block, c in zip(model.blocks, caches[0]):
                c.len = n
                y = block(y, c)
            got = fastar.ops.transformer_decode(x, [b.decode_operands() for b in model.blocks],
                                                [c.k for c in caches[1]], [c.v for c in caches[1]], n, model.masks,
                                                heads=2)
            assert torch.equal(got, y), step
            x = y * 0.5
    assert all(torch.equal(a.k, b.k) and torch.equal(a.v, b.v) for a, b in zip(*caches))


def test_opcheck(backend):
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    dev = backend_device(backend)
    masks = DALLE_MASKS[:2]
    weights = [t.float().to(dev) for w in stack(2, 16, 32, seed=5) for t in w]
    ks = [randn(1, 2, 19, 8, seed=i, dtype=torch.float32).to(dev) for i in range(2)]
    vs = [randn(1, 2, 19, 8, seed=9 + i, dtype=torch.float32).to(dev) for i in range(2)]
    kinds = [m.op_args("x", 1, 1, 12, dev)[0] for m in masks]
    torch.library.opcheck(ns.transformer_decode.default,
                          (randn(1, 1, 16, seed=3, dtype=torch.float32).to(dev), weights, ks, vs, 11, kinds,
                           [TEXT, GRID, 3] * 2, 2, 1e-5, "none", "gpt2", None))


def test_bad_inputs_name_the_argument():
    C, masks = 32, DALLE_MASKS[:2]
    layers = [[t.float() for t in w] for w in stack(2, C, 64, seed=1)]
    ks = [torch.zeros(1, 4, 19, 8) for _ in range(2)]
    x = torch.zeros(1, 1, C)
    td = fastar.ops.transformer_decode
    with pytest.raises(ValueError, match="v_caches must have one entry per layer"):
        td(x, layers, ks, ks[:1], 5, masks, heads=4)
    with pytest.raises(ValueError, match=r"layers\[1\] must hold the 12 tensors"):
        td(x, [layers[0], layers[1][:11]], ks, ks, 5, masks, heads=4)
    with pytest.raises(ValueError, match="heads must be a positive int dividing C = 32"):
        td(x, layers, ks, ks, 5, masks, heads=5)
    with pytest.raises(ValueError, match=r"cache_len must be in \[0, Lmax - L = 18\]"):
        td(x, layers, ks, ks, 19, masks, heads=4)
    with pytest.raises(ValueError, match=r"masks\[0\] must be an AttentionMask \(not block_causal"):
        td(x, layers, ks, ks, 5, [AttentionMask.block_causal([1, 4]), None], heads=4)
    with pytest.raises(ValueError, match="approximate must be one of"):
        td(x, layers, ks, ks, 5, masks, heads=4, approximate="erf")
    with pytest.raises(TypeError, match="x must be one of"):
        td(x.bfloat16(), layers, ks, ks, 5, masks, heads=4)
    bad = [list(layers[0]), layers[1]]
    bad[0][8] = torch.zeros(64, C + 1)
    with pytest.raises(RuntimeError, match=r"layers\[0\]\[8\] \(mlp.0.weight\) must be \[64, 32\]"):
        td(x, bad, ks, ks, 5, masks, heads=4)
    bad[0][8] = layers[0][8].double()
    with pytest.raises(RuntimeError, match=r"layers\[0\]\[8\] \(mlp.0.weight\) is Double, x is Float"):
        td(x, bad, ks, ks, 5, masks, heads=4)
    with pytest.raises(RuntimeError, match=r"k_caches\[1\] and v_caches\[1\] must be \(1, 4, Lmax, 8\)"):
        td(x, layers, ks, [ks[0], torch.zeros(1, 2, 19, 16)], 5, masks, heads=4)
    with pytest.raises(ValueError, match="block must be one of"):
        td(x, layers, ks, ks, 5, masks, heads=4, block="t5")
    with pytest.raises(TypeError, match=r"k_caches\[0\] and v_caches\[0\] must both be torch.float32 as x \(or both "
                                        r"bfloat16, or both float16\), got torch.bfloat16 and torch.float16"):
        td(x, layers, [k.bfloat16() for k in ks], [k.half() for k in ks], 5, masks, heads=4)
    with pytest.raises(TypeError, match=r"k_caches\[1\] and v_caches\[1\] must both be torch.float32 as x"):
        td(x, layers, [ks[0], ks[1].double()], [ks[0], ks[1].double()], 5, masks, heads=4)
    with pytest.raises(ValueError, match=r"layers\[0\] must hold the 7 tensors .* of a llama block, got 12"):
        td(x, layers, ks, ks, 5, masks, heads=4, block="llama")
    llama = [[t.float() for t in w] for w in stack(2, C, 64, seed=1, block="llama")]
    with pytest.raises(ValueError, match=r"rope must be \(L, D / 2, 2\) = \(1, 4, 2\) with llama blocks"):
        td(x, llama, ks, ks, 5, masks, heads=4, block="llama", rope=torch.zeros(1, 8, 2))
    with pytest.raises(ValueError, match="rope must be"):
        td(x, layers, ks, ks, 5, masks, heads=4, rope=torch.zeros(1, 4, 2))


def test_a_bad_later_layer_is_refused_before_any_cache_is_written():
    """Every layer's weights and caches are checked first: a bad layer 1 once raised after layer 0 had written its
    keys and values into the caller's caches."""
    C, F, heads, D = 32, 64, 4, 8
    layers = [[t.float() for t in w] for w in stack(2, C, F, seed=1)]
    layers[1][0] = torch.ones(C + 1)
    ks, vs = [torch.zeros(1, heads, 6, D) for _ in range(2)], [torch.zeros(1, heads, 6, D) for _ in range(2)]
    with pytest.raises(RuntimeError, match=r"layers\[1\]\[0\]"):
        fastar.ops.transformer_decode(torch.randn(1, 1, C), layers, ks, vs, 0, [None, None], heads=heads)
    assert all(not t.any() for t in ks + vs)


def test_devices_are_checked_before_the_kernel():
    """One weight or cache on the meta device (a model built there, one weight never loaded) sent the call to the
    fake kernel, which returned uninitialized memory and wrote no cache: now an error naming the tensor."""
    C, heads, D = 32, 4, 8
    layers = [[t.float() for t in w] for w in stack(1, C, 64, seed=1)]
    ks, vs = [torch.zeros(1, heads, 6, D)], [torch.zeros(1, heads, 6, D)]
    x = torch.randn(1, 1, C)
    bad = [list(layers[0])]
    bad[0][2] = bad[0][2].to("meta")
    with pytest.raises(ValueError, match=r"layers\[0\]\[2\] \(attn.qkv.weight\) is on meta but x is on cpu"):
        fastar.ops.transformer_decode(x, bad, ks, vs, 0, [None], heads=heads)
    with pytest.raises(ValueError, match=r"k_caches\[0\] is on meta but x is on cpu"):
        fastar.ops.transformer_decode(x, layers, [ks[0].to("meta")], vs, 0, [None], heads=heads)


def test_any_weight_layout():
    """Weights of any strides (a transposed copy's transpose), as fastar.ops.linear and the reference take them;
    the kernel refused them with 'must be contiguous on cpu, got cpu'."""
    C, heads = 32, 4
    layers = [[t.float() for t in w] for w in stack(1, C, 64, seed=1)]
    strided = [[t.t().contiguous().t() if t.dim() == 2 else t for t in layers[0]]]
    assert not strided[0][2].is_contiguous()
    caches = [[torch.zeros(1, heads, 6, C // heads)] for _ in range(4)]
    x = torch.randn(1, 1, C)
    want = fastar.ops.transformer_decode(x, layers, caches[0], caches[1], 0, [None], heads=heads)
    got = fastar.ops.transformer_decode(x, strided, caches[2], caches[3], 0, [None], heads=heads)
    assert fastar.last_backend("transformer_decode") == "cpu"
    assert torch.equal(got, want) and torch.equal(caches[2][0], caches[0][0])
