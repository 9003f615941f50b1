"""`fastar selftest --bench` on a GPU: fastar's CUDA kernels against the official formulation (the `torch`
backend: SDPA, torch.cdist + argmin, F.linear) and the peers installed (flex_attention, flash-attn, FAISS-GPU),
timed with CUDA events (median of repeats after a warm-up), same inputs, same process. Prints one row per contender
with its ratio to fastar; the full benchmarks (pytest benchmarks --benchmark-only) keep the numbers.
"""
import importlib.util
import statistics

import torch

import fastar
from fastar.ops import AttentionMask


def cuda_time_ms(fn, repeats=20):
    """Median milliseconds of fn() by CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _on(backend, fn):
    def run():
        with fastar.use_backend(backend):
            return fn()
    return run


def attention_contenders(B, H, L, D, causal, backward=True, dtype=torch.bfloat16):
    """{name: fn} for forward + backward of one attention call, or (backward=False) its forward alone without
    autograd: the two rows tell the forward kernel's time from the backward's."""
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    dout = torch.randn(B, H, L, D, device="cuda", dtype=dtype)
    mask = AttentionMask.causal() if causal else AttentionMask.full()

    def timed(attn):
        def run():
            if not backward:
                with torch.no_grad():
                    return attn(q, k, v)
            out = attn(q, k, v)
            torch.autograd.grad(out, (q, k, v), dout)
        return run

    out = {"fastar cuda": _on("cuda", timed(lambda q, k, v: fastar.ops.attention(q, k, v, mask))),
           "torch (SDPA)": _on("torch", timed(lambda q, k, v: fastar.ops.attention(q, k, v, mask)))}
    if importlib.util.find_spec("torch.nn.attention.flex_attention"):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        block = create_block_mask(lambda b, h, i, j: i >= j, None, None, L, L) if causal else None
        compiled = torch.compile(flex_attention)
        out["flex_attention"] = timed(lambda q, k, v: compiled(q, k, v, block_mask=block))
    if importlib.util.find_spec("flash_attn"):
        from flash_attn import flash_attn_func
        out["flash-attn"] = timed(lambda q, k, v: flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal).transpose(1, 2))
    return out


def vq_contenders(N, V, D):
    x, codebook = torch.randn(N, D, device="cuda"), torch.randn(V, D, device="cuda")
    out = {"fastar cuda": _on("cuda", lambda: fastar.ops.vq_nearest(x, codebook)),
           "torch (cdist argmin)": _on("torch", lambda: fastar.ops.vq_nearest(x, codebook))}
    if importlib.util.find_spec("faiss") is not None:
        import faiss
        if hasattr(faiss, "StandardGpuResources"):
            index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), D)
            index.add(codebook.cpu().numpy())
            out["FAISS-GPU"] = lambda: index.search(x.cpu().numpy(), 1)  # FAISS takes host arrays here
    return out


def linear_contenders(M, layers=((512, 1536), (512, 512), (512, 2048), (2048, 512)) * 12):
    """{name: fn} for one decode step through the DALL-E benchmark model's 48 linear layers (144 MB of float32
    weights, past the L2 cache): M rows."""
    ws = [(torch.randn(n, k, device="cuda") / k ** 0.5, torch.randn(n, device="cuda")) for k, n in layers]
    wb = [(w.bfloat16(), b) for w, b in ws]
    xs = {k: torch.randn(M, k, device="cuda") for k, _ in layers}

    def step(fn, weights):
        def run():
            for w, b in weights:
                fn(xs[w.shape[1]], w, b)
        return run

    return {"fastar cuda": _on("cuda", step(fastar.ops.linear, ws)),
            "fastar cuda bf16 weights": _on("cuda", step(fastar.ops.linear, wb)),
            "torch (F.linear, cuBLAS)": step(torch.nn.functional.linear, ws),
            "cuBLAS bf16 x and weights": step(lambda x, w, b: torch.nn.functional.linear(x.bfloat16(), w, b.bfloat16()),
                                              wb)}


def dalle_decode_step(model, generator=None):
    """(one_call, blocks) for one decode step of a DALLE model (B 1, the image token at the grid's middle row, random
    caches on the model's device): its blocks as one fastar.ops.transformer_decode call, and called one by one
    (Block.forward); both return the step's output."""
    from fastar.models.dalle.dalle import KVCache
    cfg, device = model.cfg, model.bos.device
    H = cfg.heads
    caches = [KVCache(1, H, cfg.text_len + 1 + cfg.grid ** 2, cfg.width // H, model.bos) for _ in model.blocks]
    for c in caches:
        c.k.normal_(generator=generator), c.v.normal_(generator=generator)
    n = cfg.text_len + 1 + cfg.grid ** 2 // 2  # text + half the grid cached
    x = torch.randn(1, 1, cfg.width, device=device, generator=generator)
    stack = [block.decode_operands() for block in model.blocks]

    def one_call():
        return fastar.ops.transformer_decode(x, stack, [c.k for c in caches], [c.v for c in caches], n, model.masks,
                                             heads=H)

    def blocks():
        with torch.no_grad():
            y = x
            for block, c in zip(model.blocks, caches):
                c.len = n
                y = block(y, c)
            return y
    return one_call, blocks


def decode_step_contenders(depth=12, width=512, text=256, grid=32):
    """{name: fn} for one DALL-E decode step (B 1, a mid-image token) through the benchmark model's blocks on CUDA:
    fastar.ops.transformer_decode (one call) against the same blocks called one by one on the torch backend (F.linear,
    SDPA over the cache prefix with the dense mask row)."""
    from fastar.models.dalle import DALLE, DALLEConfig
    model = DALLE(DALLEConfig(width=width, depth=depth, heads=width // 64, text_len=text, grid=grid)).cuda().eval()
    one_call, blocks = dalle_decode_step(model)
    return {"fastar cuda": _on("cuda", one_call), "torch blocks (F.linear, SDPA)": _on("torch", blocks)}


def diffusion_contenders(N=128, depth=6, width=1024, C=16, Z=768, steps=100):
    """{name: fn} for one MAR-B head sampling call (100 steps, N rows with cfg): fastar eager, fastar replaying its
    CUDA graph, and the official loop (the reference formulation on CUDA)."""
    from fastar.reference import diffusion as ref
    w = {k: torch.randn(shape, device="cuda") / (shape[1] if len(shape) == 2 else 1) ** 0.5
         for k, shape in ref.head_shapes(depth, width, C, Z).items()}
    z = torch.randn(N, Z, device="cuda")

    def run(graph):
        return lambda: fastar.ops.diffusion_sample(z, w, num_steps=steps, cfg=2.9, cuda_graph=graph)
    return {"fastar cuda": _on("cuda", run(False)), "fastar cuda graph": _on("cuda", run(True)),
            "official loop (torch)": _on("torch", run(False))}


def main(quick=False):
    cases = [("attention fwd causal B8 H16 L1024 D64 bf16",
              lambda: attention_contenders(8, 16, 1024, 64, True, backward=False)),
             ("attention fwd+bwd causal B8 H16 L1024 D64 bf16", lambda: attention_contenders(8, 16, 1024, 64, True)),
             ("vq_nearest N65536 V4096 D32 fp32", lambda: vq_contenders(65536, 4096, 32)),
             ("linear decode step DALL-E 48 layers 1 row fp32", lambda: linear_contenders(1)),
             ("transformer_decode DALL-E 12 blocks B1 fp32", decode_step_contenders),
             ("diffusion_sample MAR-B head 100 steps 128 rows cfg fp32", diffusion_contenders)]
    if not quick:
        cases += [("attention fwd full B4 H16 L2240 D128 bf16",
                   lambda: attention_contenders(4, 16, 2240, 128, False, backward=False)),
                  ("attention fwd+bwd full B4 H16 L2240 D128 bf16",
                   lambda: attention_contenders(4, 16, 2240, 128, False)),
                  ("vq_nearest N262144 V16384 D64 fp32", lambda: vq_contenders(262144, 16384, 64)),
                  ("linear decode step DALL-E 48 layers 4 rows fp32", lambda: linear_contenders(4))]
    print(f"selftest --bench on {torch.cuda.get_device_name()}: median ms by CUDA events (ratio: time / fastar's)")
    for name, make in cases:
        contenders = make()
        times = {}
        for who, fn in contenders.items():
            try:
                times[who] = cuda_time_ms(fn)
            except Exception as e:  # a peer that cannot run this case is reported, not fatal
                print(f"  {name}: {who} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
        base = times.get("fastar cuda")
        for who, ms in times.items():
            ratio = f"{ms / base:6.2f}x" if base else "   n/a"
            print(f"  {name:<48} {who:<22} {ms:9.3f} ms  {ratio}")
