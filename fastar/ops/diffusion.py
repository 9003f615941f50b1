"""MAR's diffusion head sampled as one op: the whole p_sample_loop of DiffLoss.sample (csrc/cpu/diffusion.cpp)."""
import functools
import math

import torch

from fastar import _backend
from fastar.ops import _cuda_graph
from fastar.ops._checks import check_generator, check_tensor
from fastar.ops._registry import Decline, autograd_decline, first_order_only, kernel, op, wants_grad
from fastar.reference import diffusion as reference


@functools.lru_cache(maxsize=16)
def _schedule(num_steps: int) -> torch.Tensor:  # (num_steps, 7) float64, never written to
    return reference.spaced_schedule(num_steps)


def _head_weights(op, weights, z_dtype) -> dict:
    """The head's state dict as contiguous tensors of z's dtype, checked key by key against SimpleMLPAdaLN's shapes."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    if not isinstance(weights, dict):
        raise TypeError(f"{op}: weights must be a SimpleMLPAdaLN module or its state dict, got {type(weights).__name__}")
    if "input_proj.weight" not in weights or "cond_embed.weight" not in weights:
        raise ValueError(f"{op}: weights lack input_proj.weight or cond_embed.weight (SimpleMLPAdaLN's names)")
    (W, C), Z = weights["input_proj.weight"].shape, weights["cond_embed.weight"].shape[1]
    out = {}
    for k, shape in reference.head_shapes(reference.head_depth(weights), W, C, Z).items():
        if k not in weights:
            raise ValueError(f"{op}: weights lack {k!r} (SimpleMLPAdaLN's state-dict names)")
        check_tensor(op, f"weights[{k!r}]", weights[k], dtypes=None)
        if tuple(weights[k].shape) != shape:
            raise ValueError(f"{op}: weights[{k!r}] must have shape {shape}, got {tuple(weights[k].shape)}")
        out[k] = weights[k].detach().to(z_dtype).contiguous()
    return out


@kernel("diffusion_sample")  # fake kernel, for torch.compile / opcheck
def _diffusion_sample(z, weights, schedule, temperature, cfg, generator, bf16=False):
    return z.new_empty(z.shape[0] // 2 if cfg != 1.0 else z.shape[0], weights[6].shape[1])


# The official loop is the torch formulation: the reference run in z's dtype is that loop, step for step.
@op(reference=reference.diffusion_sample, torch=reference.diffusion_sample)
def diffusion_sample(z, weights, *, num_steps=100, temperature=1.0, cfg=1.0, generator=None, precision="fp32",
                     cuda_graph=False):
    """MAR's DiffLoss.sample(z, temperature, cfg) in one call: num_steps DDPM steps of the SimpleMLPAdaLN head.

    z (N, z_dim) float32 (float64 on the reference backend): one condition per token; when cfg != 1 the rows are
    [cond ; uncond] (N even), both halves see the conditional half's x_t, eps = uncond + cfg (cond - uncond), the
    variance is the conditional row's.
    weights: a SimpleMLPAdaLN module (official attribute names) or its state dict; used in z's dtype.
    num_steps: the 1000-step cosine chain respaced to num_steps (MAR: 100). temperature scales the per-step noise.
    generator: the torch.Generator the noise is drawn from, in the official order (x_T, then (N, C) per step).
    precision: "fp32", or "bf16": the per-step GEMMs (adaLN, block MLPs, output) on bfloat16 operands with float32
    accumulation (each product's result rounded to bfloat16 where oneDNN runs it: build_info()["cpu_bf16_gemm"]),
    fast on CPUs with AMX-BF16 or AVX512-BF16 (fastar.build_info()["cpu_bf16"]); elsewhere the bf16 products are
    emulated, the same numerics and slower than float32, and the cpu backend warns so (fastar.check_bf16_gemm).
    Error against float64:
    tests/test_diffusion.py::test_diffusion_sample_bf16 (within the tolerance rule of a bfloat16 reference run).
    cuda_graph: on the cuda backend, the call is captured as a CUDA graph on first use and replayed after (one
    graph launch instead of num_steps x ~40 kernel launches; fastar/ops/_cuda_graph.py): one capture per z shape,
    weights storage, num_steps, temperature, cfg and generator; the draws are the eager call's. Other backends run
    eagerly. Needs z on a CUDA device.
    Returns the tokens (N, C), or the conditional half (N/2, C) when cfg != 1 (what sample_tokens keeps).
    The kernels have no backward (inference): the weights are read as constants, and a z that requires grad (under
    grad mode) runs the official loop, differentiable.
    """
    op = "diffusion_sample"
    check_tensor(op, "z", z, dim=2, dtypes=(torch.float32, torch.float64))
    if z.dtype == torch.float64 and _backend.active(z.device) != "reference":
        raise TypeError(f"{op}: z must be float32 (float64 runs on the reference backend only), got {z.dtype}")
    w = _head_weights(op, weights, z.dtype)
    if z.shape[1] != w["cond_embed.weight"].shape[1]:
        raise ValueError(f"{op}: z has width {z.shape[1]} but the head's cond_embed takes "
                         f"{w['cond_embed.weight'].shape[1]}")
    if any(t.device != z.device for t in w.values()):
        raise ValueError(f"{op}: weights must be on z's device {z.device}")
    if not isinstance(num_steps, int) or not 2 <= num_steps <= reference.NUM_TIMESTEPS:
        raise ValueError(f"{op}: num_steps must be an int in [2, {reference.NUM_TIMESTEPS}], got {num_steps!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{op}: temperature must be finite and >= 0, got {temperature}")
    if not math.isfinite(cfg):
        raise ValueError(f"{op}: cfg must be finite, got {cfg}")
    if cfg != 1.0 and z.shape[0] % 2:
        raise ValueError(f"{op}: cfg={cfg} needs z as [cond ; uncond] rows, an even count, got {z.shape[0]}")
    check_generator(op, generator, z.device)
    if precision not in reference.PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {reference.PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16"
    if bf16 and _backend.active(z.device) == "cpu":
        _backend.check_bf16_gemm(op, z.device)
    if cuda_graph and z.device.type != "cuda":
        raise ValueError(f"{op}: cuda_graph=True captures the CUDA kernels, but z is on {z.device}")
    ws, schedule = list(w.values()), _schedule(num_steps)
    declined = autograd_decline(op, z, path="the official loop")  # the weights are read as constants (detached)

    def run(ops):
        def call(z_):
            return ops.diffusion_sample(z_, ws, schedule, float(temperature), float(cfg), generator, bf16)
        if not cuda_graph:
            return call(z)
        key = (tuple(z.shape), z.device, num_steps, float(temperature), float(cfg), id(generator), bf16,
               tuple(t.data_ptr() for t in ws))
        return _cuda_graph.run(key, call, [z], generator, keep=ws)
    return z.device, declined or run


@functools.lru_cache(maxsize=8)
def _loss_table(device: torch.device) -> torch.Tensor:  # (1000, 8) float64 on device (kernels index it), read only
    return reference.loss_table().to(device)


def _loss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _loss_backward(ops, ctx, grad_loss, _grad_grad_output):
    first_order_only("diffusion_loss")  # the loss's curvature in model_output is not in the saved gradient
    (grad_output,) = ctx.saved_tensors
    return grad_loss[:, None] * grad_output, None, None, None, None


@kernel("diffusion_loss", backward=_loss_backward, setup_context=_loss_setup_context)
def _diffusion_loss(model_output, x_start, noise, t, table):
    return x_start.new_empty(x_start.shape[0]), torch.empty_like(model_output)


@op(reference=reference.diffusion_loss, torch=reference.diffusion_loss)
def diffusion_loss(x_start, z, head, *, t, noise):
    """MAR's DiffLoss.forward per row: the iDDPM hybrid loss MSE(eps) + VB (the learned-range variance's KL in bits,
    the discretized Gaussian NLL at t = 0; stop-gradient on eps in it) of head at x_t = q_sample(x_start, t, noise).

    x_start, noise (N, C) float32 or float64: targets and their noise; z (N, Z) the conditions; t (N,) int64 in
    [0, 1000): timesteps of the training chain (MAR repeats rows diffusion_batch_mul times before this call).
    head: a SimpleMLPAdaLN (forward(x_t, t, z) -> (N, 2C)); gradients reach its parameters and z through autograd.
    The head runs as its module; the loss terms and their gradient run as one fused pass (csrc/cpu/diffusion_loss.cpp,
    csrc/kernels/diffusion/diffusion_loss.cu).
    Returns the loss (N,). Differentiable once (double backward raises). A noise that requires grad (the official
    code draws it) runs the torch formulation: the fused gradient leaves out the loss's direct term in noise.
    """
    op = "diffusion_loss"
    check_tensor(op, "x_start", x_start, dim=2, dtypes=(torch.float32, torch.float64))
    N, C = x_start.shape
    check_tensor(op, "noise", noise, dim=2, dtypes=(x_start.dtype,))
    check_tensor(op, "z", z, dim=2, dtypes=(x_start.dtype,))
    if tuple(noise.shape) != (N, C) or z.shape[0] != N:
        raise ValueError(f"{op}: noise must be (N, C) = {(N, C)} and z (N, z_dim), got {tuple(noise.shape)} and "
                         f"{tuple(z.shape)}")
    check_tensor(op, "t", t, dim=1, dtypes=(torch.int64,))
    if t.shape[0] != N or (N and (t.min() < 0 or t.max() >= reference.NUM_TIMESTEPS)):
        raise ValueError(f"{op}: t must be ({N},) timesteps in [0, {reference.NUM_TIMESTEPS})")
    if not isinstance(head, torch.nn.Module):
        raise TypeError(f"{op}: head must be a SimpleMLPAdaLN module, got {type(head).__name__}")
    in_proj = head.get_parameter("input_proj.weight")
    if in_proj.shape[1] != C or head.get_parameter("cond_embed.weight").shape[1] != z.shape[1]:
        raise ValueError(f"{op}: head takes (C, z_dim) = ({in_proj.shape[1]}, "
                         f"{head.get_parameter('cond_embed.weight').shape[1]}), got x_start {C} wide and z "
                         f"{z.shape[1]} wide")

    def run(ops):
        table = _loss_table(x_start.device)
        model_output = head(reference.q_sample(x_start, t, noise, table), t, z)
        return ops.diffusion_loss(model_output, x_start, noise, t, table)[0]
    if wants_grad(noise):
        return x_start.device, Decline("the fused loss has no gradient for noise; under autograd its torch "
                                       "formulation runs")
    return x_start.device, run
