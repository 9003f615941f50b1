"""How an op is written on fastar's kernels: its compiled kernels' fake functions and autograd sit beside it
(@kernel), and the check -> resolve backend -> run preamble of every public op exists once (@op).

The body of a public op checks its arguments (each error naming the argument) and returns (device, run):
the device whose backend runs the op, and run(ops), the call of the compiled kernels on ops =
torch.ops.fastar or torch.ops.fastar_simt. @op resolves the backend (fastar._backend) and calls run(ops), or
the same arguments on fastar.torch or fastar.reference, whose functions have the op's signature. When the
active backend's kernel does not take the inputs, the body returns Decline(reason) instead of run: the op
runs its torch formulation, warns once, and fastar.last_backend says "torch".

A new kernel family in a few lines (fastar/ops/multi_axis.py, HiT's multi-axis attention, reduced to its frame;
MAR's diffusion_sample alike):

    import torch
    from fastar.ops._checks import check_tensor
    from fastar.ops._registry import kernel, op
    from fastar.reference import multi_axis as reference
    from fastar.torch import multi_axis as torch_impl

    @kernel("multi_axis_attention_fwd")  # schema in csrc/torch/ops.h; this is its fake, for torch.compile / opcheck
    def _multi_axis_attention_fwd(q, k, v, block_size, scale):
        return torch.empty_like(q), q.new_empty(q.shape[:4], dtype=torch.float32)  # out, lse

    @op(reference=reference.multi_axis_attention, torch=torch_impl.multi_axis_attention)
    def multi_axis_attention(q, k, v, block_size, *, scale=None):
        \"\"\"HiT's regional and dilated heads over q, k, v (B, H, W, heads, D).\"\"\"
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_tensor("multi_axis_attention", name, t, dim=5)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return q.device, lambda ops: ops.multi_axis_attention_fwd(q, k, v, block_size, scale)[0]

A differentiable kernel names its formula: @kernel("name", backward=fn, setup_context=fn), where
backward(ops, ctx, *grads) gets the namespace its forward ran in (attention_fwd calls ops.attention_bwd).
"""
import contextlib
import dataclasses
import functools

import torch

from fastar import _backend

_NAMESPACES = (("fastar", _backend._C), ("fastar_simt", _backend._simt))  # (torch.ops namespace, module or None)


def kernel(name, *, backward=None, setup_context=None):
    """Decorates the fake (meta) function of compiled op `name`: registered, with its autograd formula if one
    is given, in every namespace that is built."""
    def register(fake):
        for ns, module in _NAMESPACES:
            if module is not None:
                torch.library.register_fake(f"{ns}::{name}")(fake)
                if backward is not None:
                    torch.library.register_autograd(f"{ns}::{name}",
                                                    functools.partial(backward, getattr(torch.ops, ns)),
                                                    setup_context=setup_context)
        return fake
    return register


@dataclasses.dataclass(frozen=True)
class Decline:
    """Returned by an op's body instead of run when the active backend's kernel does not take the inputs."""
    reason: str  # e.g. "the simt kernel takes head dims up to 128, got 640"


def wants_grad(*tensors):
    """Whether autograd would need a gradient of any of `tensors` here (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_input_grads_only = 0  # depth of input_grads_only(): a global, since CUDA's backward runs on the engine's threads


@contextlib.contextmanager
def input_grads_only():
    """Within it, the backward of fastar's ops with weights (conv3x3, the models' Linear) returns no gradient for
    their weights and biases: for a torch.autograd.grad(outputs, inputs) whose inputs are activations, as R1's
    penalty (HiT's discriminator at the reals). A Python autograd.Function's needs_input_grad says which inputs
    require grad, not which the graph task reaches, so that backward computed every weight's gradient and autograd
    dropped it; torch's own backward ops skip them. Not for a backward() or an autograd.grad of weights: it would
    leave out these ops' share of their gradients."""
    global _input_grads_only
    _input_grads_only += 1
    try:
        yield
    finally:
        _input_grads_only -= 1


def weight_grad_needed(ctx, i):
    """Whether the backward of ctx computes the gradient of its input i, a weight or a bias: needs_input_grad[i],
    and never within input_grads_only()."""
    return ctx.needs_input_grad[i] and not _input_grads_only


def first_order_only(name):
    """Called by a kernel's backward formula: under create_graph=True (grad mode on in the backward) it raises, as
    the formula is a kernel that autograd cannot differentiate again (its second derivative would be zero)."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"fastar.ops.{name}: double backward (create_graph=True) is not implemented, the backward "
                           f"is a kernel; for higher-order gradients run it on the torch backend "
                           f"(with fastar.use_backend('torch'))")


def lse_grads(fwd, bwd, q, k, lse, dlse, scale):
    """The gradients (dq, dk) that a logsumexp output's gradient dlse adds to an attention's, from its own kernels:
    d lse_i / d s_ij = P_ij with s = scale q k^T, so dq_i += scale dlse_i (P K)_i, i.e. scale dlse times the
    attention of q over values k, and dk += P^T (scale dlse q), i.e. the dv the backward computes for
    dout = scale dlse q. fwd(q, k, v) -> (out, lse); bwd(dout, q, k, v, out, lse) -> (dq, dk, dv); lse has q's
    shape without its last dim. One more forward and backward, only where lse is used."""
    g = (scale * dlse).unsqueeze(-1)
    pk, _ = fwd(q, k, k)
    _, _, dk = bwd((g * q).to(q.dtype).contiguous(), q, k, k, pk, lse)
    return (g * pk).to(q.dtype), dk


def cpu_kernel_decline(name, device, dtype, *, gpu_path):
    """The Decline of an op whose only kernel is a float32 CPU one (conv3x3, and the inference kernels below), or
    None where that kernel runs: off the cpu backend (cuda and simt have none; the python backends run their
    formulation) and in another dtype."""
    if _backend.active(device) != "cpu":
        return Decline(f"{name} has a CPU kernel only ({gpu_path})")
    if dtype != torch.float32:
        return Decline(f"the CPU kernel takes float32, got {dtype}")
    return None


def autograd_decline(name, *tensors, path="its torch formulation"):
    """The Decline of a kernel without a backward when autograd would need a gradient of any of `tensors` (None
    entries allowed): its result would silently carry no gradient. None otherwise."""
    if wants_grad(*tensors):
        return Decline(f"{name} has no backward (an inference kernel); under autograd {path} runs")
    return None


def cpu_inference_decline(name, device, dtype, tensors, *, gpu_path, autograd_path):
    """cpu_kernel_decline for a kernel without a backward (mlp, gelu_with_derivative, linear_weight_grad): also when
    autograd would need a gradient of `tensors` (None entries allowed)."""
    declined = cpu_kernel_decline(name, device, dtype, gpu_path=gpu_path)
    return declined or autograd_decline(name, *tensors, path=autograd_path)


OPS = {}  # name -> public op: every op on compiled kernels (cpu, cuda, simt), what `fastar selftest` must cover


def op(*, reference, torch):
    """Decorates the body of public op `body.__name__` (see the module docstring): the op with its checks, its
    backend's kernels and the torch / reference formulations of fastar.torch / fastar.reference; listed in OPS."""
    impls = {"torch": torch, "reference": reference}

    def wrap(body):
        name = body.__name__

        @functools.wraps(body)
        def public(*args, **kwargs):
            device, run = body(*args, **kwargs)
            backend = _backend.resolve(name, device)
            if isinstance(run, Decline) and backend not in impls:
                _backend.warn_once(name, (backend, run.reason), f"fastar.ops.{name}: {run.reason}; running the "
                                   f"torch backend (plain PyTorch) instead", stacklevel=3)
                backend = "torch"
            _backend.ran(name, backend)
            if backend in impls:
                return impls[backend](*args, **kwargs)
            return run(_backend.namespace(backend))
        OPS[name] = public
        return public
    return wrap
