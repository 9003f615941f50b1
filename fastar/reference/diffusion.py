"""Reference diffusion-head sampling, written as MAR computes it (models/diffloss.py, diffusion/*.py of LTH14/mar).

The head (SimpleMLPAdaLN, MAR's models/diffloss.py) maps a noisy token x (N, C), an original timestep t
and a condition z (N, Z) to [eps, v] (N, 2C): y = time_embed(t) + cond_embed(z); x = input_proj(x); per block
x += gate * mlp(LN(x) * (1 + scale) + shift) with (shift, scale, gate) = adaLN(SiLU(y)); then the final layer.
Sampling is iDDPM's p_sample_loop over a cosine schedule respaced to num_steps: eps-prediction, LEARNED_RANGE
variance, no clipping, temperature on the per-step noise only. Run in float32 this is the official loop (every
step recomputes the condition and the time embedding for all N rows), the baseline fastar's kernels are timed
against; run in float64 it is the tests' oracle. Noise is always drawn in float32, as the official code draws it.
training_loss is DiffLoss.forward's per-row iDDPM hybrid loss (MSE on eps + the VB term of the learned variance).
"""
import math

import torch
import torch.nn.functional as F

NUM_TIMESTEPS = 1000  # the training chain that MAR's respaced sampler skips along
FREQ_DIM = 256  # TimestepEmbedder's sinusoidal width
LN_EPS = 1e-6
# Columns of spaced_schedule, one row per spaced step.
SCHEDULE_COLUMNS = ("timestep", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
                    "posterior_mean_coef2", "min_log", "max_log")


def head_shapes(depth: int, width: int, in_channels: int, z_channels: int) -> dict:
    """SimpleMLPAdaLN's state dict (DiffLoss.net of a MAR checkpoint): name -> shape, in module order."""
    W = width
    layers = {"time_embed.mlp.0": (W, FREQ_DIM), "time_embed.mlp.2": (W, W), "cond_embed": (W, z_channels),
              "input_proj": (W, in_channels)}
    for i in range(depth):
        b = f"res_blocks.{i}."
        layers.update({b + "in_ln": (W,), b + "mlp.0": (W, W), b + "mlp.2": (W, W), b + "adaLN_modulation.1": (3 * W, W)})
    layers.update({"final_layer.adaLN_modulation.1": (2 * W, W), "final_layer.linear": (2 * in_channels, W)})
    return {f"{k}.{p}": shape if p == "weight" else shape[:1] for k, shape in layers.items() for p in ("weight", "bias")}


def head_depth(weights: dict) -> int:
    """Number of res blocks in a head state dict."""
    return sum(1 for k in weights if k.startswith("res_blocks.") and k.endswith(".in_ln.weight"))


def _spaced_timesteps(num_steps: int) -> list:
    """iDDPM's space_timesteps(1000, [num_steps]): num_steps near-evenly spaced original steps, in the same
    float64 accumulation and round-half-even."""
    stride = (NUM_TIMESTEPS - 1) / (num_steps - 1)
    taken, at = set(), 0.0
    for _ in range(num_steps):
        taken.add(round(at))
        at += stride
    return sorted(taken)


def _chain(num_steps: int) -> dict:
    """float64 tables of the cosine chain (betas clipped at 0.999) respaced to num_steps as iDDPM's SpacedDiffusion:
    betas, alphas_cumprod (ac), ac_prev, and the posterior variance's log clipped at the first step."""
    if not 2 <= num_steps <= NUM_TIMESTEPS:
        raise ValueError(f"spaced_schedule: num_steps must be in [2, {NUM_TIMESTEPS}], got {num_steps}")

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    alphas_cumprod, prod = [], 1.0
    for i in range(NUM_TIMESTEPS):
        prod *= 1.0 - min(1 - alpha_bar((i + 1) / NUM_TIMESTEPS) / alpha_bar(i / NUM_TIMESTEPS), 0.999)
        alphas_cumprod.append(prod)
    timesteps = _spaced_timesteps(num_steps)
    betas, last = [], 1.0
    for t in timesteps:
        betas.append(1 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    betas = torch.tensor(betas, dtype=torch.float64)
    ac = torch.cumprod(1.0 - betas, 0)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at the chain's first step: its log is clipped to the second step's.
    min_log = torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log()
    return {"timesteps": torch.tensor(timesteps, dtype=torch.float64), "betas": betas, "ac": ac, "ac_prev": ac_prev,
            "min_log": min_log}


def spaced_schedule(num_steps: int) -> torch.Tensor:
    """(num_steps, len(SCHEDULE_COLUMNS)) float64: per spaced step i (sampling runs i = num_steps-1 ... 0) the
    original timestep the head sees and the coefficients of x0-hat, the posterior mean and the learned-range
    log-variance bounds."""
    c = _chain(num_steps)
    betas, ac, ac_prev = c["betas"], c["ac"], c["ac_prev"]
    return torch.stack([c["timesteps"], (1.0 / ac).sqrt(), (1.0 / ac - 1).sqrt(), betas * ac_prev.sqrt() / (1.0 - ac),
                        (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac), c["min_log"], betas.log()], dim=1)


def timestep_embedding(t: torch.Tensor, dtype) -> torch.Tensor:
    """(N,) timesteps -> (N, 256) [cos, sin] sinusoids, max period 10000 (TimestepEmbedder.timestep_embedding)."""
    half = FREQ_DIM // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=dtype) / half).to(t.device)
    args = t[:, None].to(dtype) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


PRECISIONS = ("fp32", "bf16")  # diffusion_sample's modes: bf16 rounds the per-step GEMMs' operands to bfloat16


def _bf16_linear(x, weight, bias):
    """A Linear whose operands are rounded to bfloat16, whose products are summed in x's dtype and whose result
    (before the bias) is rounded to bfloat16: the CPU kernel's oneDNN GEMM does that last rounding, its MKL GEMM
    does not (fastar.build_info()["cpu_bf16_gemm"]), so this is the larger error of the two."""
    y = F.linear(x.bfloat16().to(x.dtype), weight.bfloat16().to(x.dtype)).bfloat16().to(x.dtype)
    return y if bias is None else y + bias


def head_forward(weights: dict, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, precision="fp32") -> torch.Tensor:
    """SimpleMLPAdaLN.forward: x (N, C), t (N,) original timesteps, c (N, Z) -> (N, 2C) [eps, v]. precision
    "bf16": the GEMMs that fastar's loop runs per step (adaLN, the block MLPs, the output) take bf16 operands."""
    w, step_linear = weights, _bf16_linear if precision == "bf16" else F.linear
    t_emb = F.linear(timestep_embedding(t, x.dtype), w["time_embed.mlp.0.weight"], w["time_embed.mlp.0.bias"])
    t_emb = F.linear(F.silu(t_emb), w["time_embed.mlp.2.weight"], w["time_embed.mlp.2.bias"])
    y = t_emb + F.linear(c, w["cond_embed.weight"], w["cond_embed.bias"])  # (N, width)
    x = F.linear(x, w["input_proj.weight"], w["input_proj.bias"])
    for i in range(head_depth(w)):
        b = f"res_blocks.{i}."
        shift, scale, gate = step_linear(F.silu(y), w[b + "adaLN_modulation.1.weight"],
                                      w[b + "adaLN_modulation.1.bias"]).chunk(3, dim=-1)
        h = _modulate(F.layer_norm(x, x.shape[-1:], w[b + "in_ln.weight"], w[b + "in_ln.bias"], LN_EPS), shift, scale)
        h = step_linear(F.silu(step_linear(h, w[b + "mlp.0.weight"], w[b + "mlp.0.bias"])), w[b + "mlp.2.weight"],
                     w[b + "mlp.2.bias"])
        x = x + gate * h
    shift, scale = step_linear(F.silu(y), w["final_layer.adaLN_modulation.1.weight"],
                            w["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=-1)
    x = _modulate(F.layer_norm(x, x.shape[-1:], eps=LN_EPS), shift, scale)
    return step_linear(x, w["final_layer.linear.weight"], w["final_layer.linear.bias"])


def head_forward_with_cfg(weights: dict, x, t, c, cfg: float, precision="fp32") -> torch.Tensor:
    """SimpleMLPAdaLN.forward_with_cfg: rows [cond ; uncond]; both halves see the first half's x; eps is
    uncond + cfg (cond - uncond) on both halves, the variance channels stay per row."""
    half = x[: len(x) // 2]
    out = head_forward(weights, torch.cat([half, half]), t, c, precision)
    C = x.shape[1]
    eps_cond, eps_uncond = out[:, :C].chunk(2)
    eps = eps_uncond + cfg * (eps_cond - eps_uncond)
    return torch.cat([torch.cat([eps, eps]), out[:, C:]], dim=1)


def diffusion_sample(z: torch.Tensor, weights: dict, *, num_steps: int = 100, temperature: float = 1.0,
                     cfg: float = 1.0, generator=None, precision: str = "fp32", cuda_graph=False) -> torch.Tensor:
    """DiffLoss.sample(z, temperature, cfg): z (N, Z) conditions ([cond ; uncond] halves when cfg != 1) ->
    tokens (N, C), or the conditional half (N/2, C) when cfg != 1 (what MAR's sample_tokens keeps).
    Computes in z's dtype; weights: the head's state dict (head_shapes); precision: see head_forward. cuda_graph:
    the op's argument, ignored here (the formulation runs eagerly)."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    dtype, device = z.dtype, z.device
    w = {k: v.to(dtype) for k, v in weights.items()}
    N, C = z.shape[0], w["input_proj.weight"].shape[1]
    schedule = spaced_schedule(num_steps).to(device)
    coef = schedule.to(dtype)  # the official code casts its float64 tables to the model's float32

    def randn(rows):
        return torch.randn(rows, C, generator=generator, device=device, dtype=torch.float32).to(dtype)

    if cfg != 1.0:
        x = randn(N // 2)
        x = torch.cat([x, x])
    else:
        x = randn(N)
    for i in reversed(range(num_steps)):
        t = schedule[i, 0].long().expand(N)
        out = head_forward_with_cfg(w, x, t, z, cfg, precision) if cfg != 1.0 else head_forward(w, x, t, z, precision)
        eps, v = out[:, :C], out[:, C:]
        sqrt_recip, sqrt_recipm1, coef1, coef2, min_log, max_log = coef[i, 1:]
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        x0 = sqrt_recip * x - sqrt_recipm1 * eps
        mean = coef1 * x0 + coef2 * x
        noise = randn(N)
        x = mean + (1.0 if i != 0 else 0.0) * torch.exp(0.5 * log_variance) * noise * temperature
    return x[: N // 2] if cfg != 1.0 else x


def _approx_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _decoder_nll(x, mean, log_scale):
    """-log p(x) in nats of a Gaussian discretized to 255 bins over [-1, 1] (the VB term at t = 0), per element."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
    log_probs = torch.where(x < -0.999, cdf_plus.clamp(min=1e-12).log(),
                            torch.where(x > 0.999, (1.0 - cdf_min).clamp(min=1e-12).log(),
                                        (cdf_plus - cdf_min).clamp(min=1e-12).log()))
    return -log_probs


LOSS_TABLE_COLUMNS = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                      "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2", "min_log",
                      "max_log")


def loss_table() -> torch.Tensor:
    """(1000, len(LOSS_TABLE_COLUMNS)) float64: per training timestep the coefficients of q_sample, x0-hat, the
    posterior mean and the learned-range log-variance bounds."""
    c = _chain(NUM_TIMESTEPS)
    betas, ac, ac_prev = c["betas"], c["ac"], c["ac_prev"]
    return torch.stack([ac.sqrt(), (1.0 - ac).sqrt(), (1.0 / ac).sqrt(), (1.0 / ac - 1).sqrt(),
                        betas * ac_prev.sqrt() / (1.0 - ac), (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac),
                        c["min_log"], betas.log()], dim=1)


def q_sample(x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ac_t) x_start + sqrt(1 - ac_t) noise, coefficients cast to x_start's dtype as the official code."""
    at = table.to(x_start.device)[t].to(x_start.dtype)
    return at[:, :1] * x_start + at[:, 1:2] * noise


def loss_terms(model_output, x_start, noise, t, table) -> torch.Tensor:
    """DiffLoss's per-row loss from the head's output [eps, v] (N, 2C) at x_t = q_sample(x_start, t, noise):
    MSE(eps) + the VB term in bits, whose gradient reaches only the variance channels (stop-gradient on eps)."""
    C = x_start.shape[1]
    at = table.to(x_start.device)[t].to(x_start.dtype)  # per-row coefficients, cast as _extract_into_tensor casts
    sqrt_ac, sqrt_1m_ac, sqrt_recip, sqrt_recipm1, coef1, coef2, min_log, max_log = at[:, :, None].unbind(1)
    x_t = sqrt_ac * x_start + sqrt_1m_ac * noise
    eps, v = model_output[:, :C], model_output[:, C:]
    true_mean = coef1 * x_start + coef2 * x_t
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    x0 = sqrt_recip * x_t - sqrt_recipm1 * eps.detach()
    mean = coef1 * x0 + coef2 * x_t
    kl = 0.5 * (-1.0 + log_var - min_log + torch.exp(min_log - log_var) + (true_mean - mean) ** 2 * torch.exp(-log_var))
    nll = _decoder_nll(x_start, mean, 0.5 * log_var)
    vb = torch.where(t == 0, nll.mean(1), kl.mean(1)) / math.log(2.0)
    return ((noise - eps) ** 2).mean(1) + vb


def training_loss(weights: dict, x_start: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
    """DiffLoss's per-row loss on the 1000-step chain (iDDPM hybrid): MSE(eps) + the VB term in bits, whose
    gradient reaches only the variance channels (stop-gradient on eps). x_start, noise (N, C); z (N, Z);
    t (N,) int64 in [0, 1000) -> (N,)."""
    table = loss_table()
    out = head_forward(weights, q_sample(x_start, t, noise, table), t, z)
    return loss_terms(out, x_start, noise, t, table)


def diffusion_loss(x_start, z, head, *, t, noise) -> torch.Tensor:
    """fastar.ops.diffusion_loss's signature: head a SimpleMLPAdaLN module (its parameters carry the gradient) or
    its state dict."""
    weights = dict(head.named_parameters()) if isinstance(head, torch.nn.Module) else head
    return training_loss(weights, x_start, z, t, noise)
