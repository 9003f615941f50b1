"""Layers the five models share."""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar.ops
from fastar import _backend
from fastar.ops._registry import wants_grad as _wants_grad
from fastar.ops._registry import weight_grad_needed


def rng_device(generator):
    """Where a model draws its random numbers from `generator`: the generator's device (the CPU without one), so
    that one generator on the model's device serves every draw of a call (CUDA ops take no CPU generator)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    return generator.device if generator is not None else torch.device("cpu")


def fast_path(x) -> bool:
    """Whether the models run fastar's fused formulation on x: fastar's kernels are active for its device (not the
    torch or reference backend, which run the official formulation the benchmarks compare against)."""
    return _backend.active(x.device) not in _backend.PYTHON_BACKENDS


def onednn_declines(x, weight, bias=None):
    """Why `linear` runs F.linear rather than oneDNN for these arguments, or None when oneDNN runs."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return f"not float32 on the CPU ({x.dtype}, {weight.dtype} on {x.device})"
    if _backend.fp32_linear_library() != "onednn":
        return f"the float32 GEMM library here is {_backend.fp32_linear_library()} (F.linear)"
    if not fast_path(x):
        return f"the {_backend.active(x.device)} backend is active (the official formulation)"
    if torch.compiler.is_compiling():  # inductor has no lowering for an unpacked oneDNN linear; it plans its own
        return "under torch.compile (the compiler plans its own GEMMs)"
    return None


def onednn_inference(x, weight, bias=None):
    """Whether x weight^T + bias runs on linear's oneDNN path without autograd here (no gradient asked)."""
    return onednn_declines(x, weight, bias) is None and not _wants_grad(x, weight, bias)


def linear_add(x, weight, bias, residual):
    """residual + x weight^T + bias (x, residual 2-D) as one oneDNN GEMM with the add in its epilogue, where
    onednn_inference(x, weight, bias) holds (HiT's generator: benchmarks/bench_hit.py)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


def _onednn(x, weight, bias=None, attr="none", algorithm=""):
    """x weight^T + bias on oneDNN, with an epilogue (attr: "none", "gelu" with algorithm "none" / "tanh")."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


class _OneDNNLinear(torch.autograd.Function):
    """linear under autograd: the forward and d x on oneDNN, d weight by fastar.ops.linear_weight_grad (oneDNN's
    matmul reading g transposed in place: 1.02-1.23x torch.mm's MKL at the models' training shapes), d bias a sum.
    Under create_graph (a double backward: HiT's R1 penalty) the gradients are differentiable torch ops."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], weight_grad_needed(ctx, 1), weight_grad_needed(ctx, 2)
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (rows, N), (rows, K)
        graph = torch.is_grad_enabled()
        dx = dw = db = None
        if need_x:
            dx = g @ weight if graph else _onednn(g, weight.t())
        if need_w:
            if graph:
                dw = g2.t() @ x2
            elif _backend.active(x2.device) == "cpu":  # (simt runs these layers on oneDNN too, its products on MKL)
                dw = fastar.ops.linear_weight_grad(g2, x2)
            else:
                dw = torch.mm(g2.t(), x2)
        if need_b and ctx.has_bias:
            db = g2.sum(0)
        return dx, dw, db


DECODE_ROWS = 4  # up to this many rows (one token per sequence) `linear` runs fastar.ops.linear, which reads each
# weight row once for them: on an AMD Zen 4, 2 threads, about 1.0-1.9x oneDNN at 1 to 4 rows of DALL-E's and VAR's
# layer shapes, below it from 8 rows at K 1024 (benchmarks/bench_linear.py; diagnostic runs per shape)


DECODE_ROWS_BF16 = 8  # the same from bfloat16 weights (decode_weights): half the bytes keep 8 rows 1.2-1.5x ahead of
# oneDNN's float32 GEMM (DALL-E's shapes, diagnostic runs), so the DALL-E CLI's 8 images a caption decode on them


def _decode_rows(x, weight, bias=None, rows=DECODE_ROWS):
    """Whether `linear` runs fastar.ops.linear here: float32 on the CPU, fastar's kernels active, no gradient asked,
    at most `rows` rows."""
    return (x.numel() <= rows * x.shape[-1] and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and fast_path(x) and not _wants_grad(x, weight, bias))


def _check_features(op, x, weight):
    """x's last dim is weight's in-features (oneDNN's own error says only 'could not create a primitive')."""
    if x.dim() == 0 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: x {tuple(x.shape)} must end in the {weight.shape[-1]} in-features of weight "
                         f"{tuple(weight.shape)}")


def linear(x, weight, bias=None):
    """F.linear, whose float32 CPU products run on the library fastar._backend.fp32_linear_library() names:
    oneDNN (torch.ops.mkldnn._linear_pointwise) on CPUs not made by Intel, where MKL's sgemm takes its AVX2 path:
    on an AMD Zen 4 (AVX-512), 2 threads, oneDNN ran VAR-d16 sampling's layer shapes 1.25x faster in all; under
    autograd through _OneDNNLinear (benchmarks/bench_var.py and bench_dalle.py time the training steps). Without
    autograd at most DECODE_ROWS rows (decoding) run fastar.ops.linear on any CPU (_decode_rows). In other dtypes
    or devices, and on the torch and reference backends (the official formulation the benchmarks compare
    against) it is F.linear (onednn_declines says which)."""
    _check_features("linear", x, weight)
    if _decode_rows(x, weight, bias):
        return fastar.ops.linear(x, weight, bias)
    if onednn_declines(x, weight, bias) is not None:
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias) if _wants_grad(x, weight, bias) else _onednn(x, weight, bias)


class _Gelu(torch.autograd.Function):
    """F.gelu under autograd, float32 on the cpu backend: the forward keeps gelu'(x) from the same pass
    (fastar.ops.gelu_with_derivative) instead of x, so the backward is one product, where torch's gelu_backward
    computes the GELU's math again. Differentiable once: a backward with create_graph=True through it raises,
    whether or not a second backward follows (no model here takes one through a GELU; HiT's R1 penalty
    differentiates its discriminator twice, which has none)."""

    @staticmethod
    def forward(ctx, x, approximate):
        y, d = fastar.ops.gelu_with_derivative(x, approximate)
        ctx.save_for_backward(d)
        return y

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError("fastar.models.layers.gelu: a backward with create_graph=True is not supported (its "
                               "forward keeps gelu'(x) only, whose own derivative a second backward would need); "
                               "run F.gelu where a double backward goes through the GELU")
        d, = ctx.saved_tensors
        return g * d, None


def gelu(x, approximate="none"):
    """F.gelu(x, approximate=approximate); under autograd, float32 on the cpu backend, _Gelu (HiT-128's G + D
    step, B 1, Zen 4, 2 threads, one profiled step: its GELUs and their backward 51 -> ~28 ms of ~750 ms)."""
    if _wants_grad(x) and x.dtype == torch.float32 and x.device.type == "cpu" and _backend.active(x.device) == "cpu":
        return _Gelu.apply(x, approximate)
    return F.gelu(x, approximate=approximate)


def linear_gelu(x, weight, bias=None, approximate="none"):
    """F.gelu(F.linear(x, weight, bias), approximate=approximate) (an MLP's first layer): on linear's oneDNN path
    one GEMM with the GELU in its epilogue, no second pass over the hidden activations; under autograd linear then
    `gelu` (one pass for the GELU and its derivative); elsewhere the two torch ops."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"linear_gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    _check_features("linear_gelu", x, weight)
    if _decode_rows(x, weight, bias):
        return F.gelu(fastar.ops.linear(x, weight, bias), approximate=approximate)
    if onednn_declines(x, weight, bias) is not None:
        return gelu(F.linear(x, weight, bias), approximate=approximate)
    if _wants_grad(x, weight, bias):  # the backward needs the GELU's derivative
        return gelu(linear(x, weight, bias), approximate=approximate)
    return _onednn(x, weight, bias, "gelu", approximate)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state-dict keys) through `linear` above; inside `decode_weights`, decode
    steps read its weight's copy in that dtype."""

    decode_weight = None  # set by decode_weights: the weight in the decode dtype, for up to DECODE_ROWS rows
    product_weight = None  # set by bf16_products: the weight in bfloat16, for every product without autograd

    def forward(self, x):
        if self._decodes(x):
            return self._decode(x)
        if self._bf16(x):
            return linear(*self._bf16_operands(x))
        return linear(x, self.weight, self.bias)

    def forward_gelu(self, x, approximate="none"):
        """F.gelu(self(x)): linear_gelu on this layer's weights (an MLP's first layer)."""
        if self._decodes(x):
            return F.gelu(self._decode(x), approximate=approximate)
        if self._bf16(x):
            return linear_gelu(*self._bf16_operands(x), approximate)
        return linear_gelu(x, self.weight, self.bias, approximate)

    def decodes(self, x):
        """Whether this layer's product of x runs fastar.ops.linear (a decode step: _decode_rows, on the decode
        weight's row limit inside decode_weights)."""
        return self._decodes(x) or _decode_rows(x, self.weight, self.bias)

    def decode_operands(self):
        """(weight, bias) a decode step reads, detached: the decode_weights copy where one is set."""
        w = self.decode_weight if self.decode_weight is not None else self.weight
        return w.detach(), None if self.bias is None else self.bias.detach()

    def _decodes(self, x):
        w = self.decode_weight
        return w is not None and _decode_rows(x, self.weight, self.bias,
                                              DECODE_ROWS_BF16 if w.dtype == torch.bfloat16 else DECODE_ROWS)

    def _decode(self, x):
        return fastar.ops.linear(x, self.decode_weight, self.bias)

    def _bf16(self, x):
        return self.product_weight is not None and not _wants_grad(x, self.weight, self.bias)

    def _bf16_operands(self, x):
        w = self.product_weight
        return x.to(w.dtype), w, None if self.bias is None else self.bias.detach().to(w.dtype)


def block_decode_operands(norm1, qkv, proj, norm2, fc1, fc2):
    """The 12 tensors of a pre-norm block's gpt2 layer in fastar.ops.transformer_decode (reference BLOCKS order), from
    the block's LayerNorms and Linears, detached; the products' decode_weights copies where set."""
    return [norm1.weight.detach(), norm1.bias.detach(), *qkv.decode_operands(), *proj.decode_operands(),
            norm2.weight.detach(), norm2.bias.detach(), *fc1.decode_operands(), *fc2.decode_operands()]


def decode_stack(blocks, x):
    """The blocks' layers of fastar.ops.transformer_decode (each block's decode_operands()) for decode steps of x's
    rows, where their products run fastar.ops.linear (Linear.decodes: the same for every product of the stack) and
    the blocks are in eval mode (transformer_decode applies no dropout); else None: the blocks run one by one."""
    if len(blocks) == 0 or blocks[0].training:
        return None
    first = next(m for m in blocks[0].modules() if isinstance(m, Linear))
    return [block.decode_operands() for block in blocks] if first.decodes(x) else None


@contextlib.contextmanager
def decode_weights(module, dtype=torch.bfloat16):
    """Inside, decode steps (up to DECODE_ROWS rows, DECODE_ROWS_BF16 in bfloat16; no autograd, float32 on the CPU) of
    module's Linear layers read copies of their weights in `dtype` (bfloat16: half the bytes of a step that reads
    every weight), made on entry from the weights as they are and dropped on exit: on the CPU one allocation on huge
    pages up to a quarter of the CPU block cache's limit (_packed_copies; the float32 weights are then held twice
    while inside). The products are the float32 ones of the rounded weights: a sampling mode, with its own results
    (the benchmarks report its agreement with float32)."""
    if dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"decode_weights: dtype must be torch.bfloat16 or torch.float32, got {dtype}")
    with _weight_copies("decode_weights", [module], "decode_weight", dtype):
        yield module


@contextlib.contextmanager
def bf16_products(*modules):
    """Inside, every product of the modules' Linear layers without autograd (decode steps inside decode_weights
    excepted) runs on bfloat16 operands: the weight's copy made on entry, the input and bias rounded per call, float32
    accumulation, the result in bfloat16 (autocast's rule for linear layers, which the official MAR and FractalGen
    code samples under on GPUs); what follows a product sees bfloat16 (fastar.ops.attention of q, k, v) or promotes
    to float32 (the residual adds, LayerNorm on the float32 stream). A sampling mode with its own results: callers
    call fastar.check_bf16_gemm first (on a CPU without bf16 instructions it is slower than float32: it warns)."""
    with _weight_copies("bf16_products", modules, "product_weight", torch.bfloat16, packed=False):
        yield


def _packed_copies(tensors, dtype):
    """Detached contiguous copies of the tensors in dtype. On the CPU, up to a quarter of the CPU block cache's limit
    (fastar.cpu_cache_info()["limit_bytes"]: 512 MB by default), they are views of one allocation, each at a 64-byte
    boundary, from that cache, on transparent huge pages once they reach its 4 MB: a decode step reads every weight
    once per token, and over 2 MB pages the reads stream faster (AMD Zen 4, 2 threads, DALL-E's 48 linear layers at 1
    row: 1.08-1.55x across runs, bench_linear.py). A process's first such mapping can be slow (on the benchmark VM ~5
    ms per MB, ~0.1 ms when reused: fractalar_in64's 1.7 GB would cost ~8 s once), so a larger set is one copy per
    tensor (float32 ones the tensors themselves), as elsewhere."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    align = max(1, 64 // itemsize)
    offsets, n = [], 0
    for t in tensors:
        offsets.append(n)
        n += -(-t.numel() // align) * align
    if (not tensors or any(t.device.type != "cpu" for t in tensors)
            or n * itemsize > _backend.cpu_cache_info()["limit_bytes"] // 4):
        return [t.detach().to(dtype).contiguous() for t in tensors]
    with _backend.cpu_cache_all_tensors():
        arena = torch.empty(n, dtype=dtype)
    return [arena[o:o + t.numel()].view(t.shape).copy_(t.detach()) for o, t in zip(offsets, tensors)]


@contextlib.contextmanager
def _weight_copies(name, modules, attr, dtype, packed=True):
    """Each Linear of the modules gets attr = its weight's copy in dtype for the scope; an enclosing scope's come
    back. packed: the copies as _packed_copies makes them (for decode steps, which stream every weight); else one
    allocation each (oneDNN's GEMMs repack their weights anyway, and on a VM a process's first huge-page mapping is
    slow: bf16_products' copies of MAR-B's transformer, packed, took 1.44 s to enter the first time, 22 ms after)."""
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}: module must be a torch.nn.Module, got {type(module).__name__}")
    before = {m: m.__dict__.get(attr) for module in modules for m in module.modules() if isinstance(m, Linear)}
    weights = [m.weight for m in before]
    copies = _packed_copies(weights, dtype) if packed else [w.detach().to(dtype).contiguous() for w in weights]
    for m, copy in zip(before, copies):
        setattr(m, attr, copy)
    try:
        yield
    finally:
        for m, w in before.items():
            if w is None:
                m.__dict__.pop(attr, None)
            else:
                setattr(m, attr, w)


def conv3x3(x, weight, bias=None, *, grad=False):
    """F.conv2d(x, weight, bias, padding=1) of a 3x3 weight; at inference (no gradient asked), and under autograd too
    when grad, on float32 where fastar's CPU kernels run, fastar.ops.conv3x3 (Winograd F(2x2, 3x3): 2.25x fewer
    multiply-adds than oneDNN's direct convolution, float32 error below it; benchmarks/bench_conv.py). The decoders'
    convolutions (VQVAE, KL-16, DALL-E's dVAE); HiT's discriminator with grad."""
    if (x.dtype == torch.float32 and _backend.active(x.device) == "cpu"
            and (grad or not _wants_grad(x, weight, bias))):
        return fastar.ops.conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class Dropout(nn.Dropout):
    """nn.Dropout through fastar.ops.dropout: the mask made by Philox inside the kernel, where torch draws it with
    a serial bernoulli_ (benchmarks/bench_dropout.py); F.dropout on the torch backend."""

    def forward(self, x):
        if self.inplace:
            raise ValueError("Dropout: inplace=True is not supported (the kernel writes a new tensor)")
        return fastar.ops.dropout(x, self.p, training=self.training)
