"""The rows of fastar.patch.mar: LTH14/mar's DiffLoss.sample and DiffLoss.forward (models/diffloss.py) on
fastar.ops.diffusion_sample and fastar.ops.diffusion_loss, and the timm Attention of its encoder / decoder blocks
(timm.models.vision_transformer, timm 0.9) on fastar.ops.attention. The contracts are the official code's; the
bodies are fastar's."""
import functools

import torch

import fastar
from fastar.models.mar.diffloss import head_loss
from fastar.patch._table import Row
from fastar.reference import diffusion as reference


def diffloss_sample(self, z, temperature=1.0, cfg=1.0):
    """DiffLoss.sample(z, temperature, cfg): the gen_diffusion chain of self.net in one op, the noise drawn from
    torch's global generator in the official order. With cfg the official loop returns both halves of the rows, of
    which only the conditional one is a sample (the model reads that half's x_t for both; the other half follows
    its own noise and MAR.sample_tokens discards it): here the conditional half twice, so the shape and the kept
    half are the official ones."""
    out = fastar.ops.diffusion_sample(z, self.net, num_steps=int(self.gen_diffusion.num_timesteps),
                                      temperature=float(temperature), cfg=float(cfg))
    return torch.cat([out, out]) if cfg != 1.0 else out


def _sample_declines(self, z, temperature=1.0, cfg=1.0):
    if z.dtype != torch.float32:
        return f"z is {z.dtype} (autocast?): diffusion_sample samples in float32"
    return None


def diffloss_forward(self, target, z, mask=None):
    """DiffLoss.forward(target, z, mask): the iDDPM hybrid loss of self.net through fastar.ops.diffusion_loss
    (fastar.models.mar.diffloss.head_loss: the head runs only on the rows of nonzero mask, the same loss and
    gradients). The timesteps and the noise are drawn as the official code draws them (torch.randint over the
    training chain, then torch.randn_like(target), from the global generator), so a seed gives the official
    draws."""
    t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
    noise = torch.randn_like(target)
    return head_loss(target, z, self.net, t, noise, mask)


_OFFICIAL_CHAIN = {"loss_type": "MSE", "model_var_type": "LEARNED_RANGE", "model_mean_type": "EPSILON"}


def _forward_declines(self, target, z, mask=None):
    chain = self.train_diffusion
    if chain.num_timesteps != reference.NUM_TIMESTEPS:
        return f"train_diffusion has {chain.num_timesteps} timesteps, not MAR's {reference.NUM_TIMESTEPS}"
    for attr, want in _OFFICIAL_CHAIN.items():
        got = getattr(getattr(chain, attr, None), "name", want)  # the enums of diffusion/gaussian_diffusion.py
        if got != want:
            return f"train_diffusion.{attr} is {got}, not MAR's {want}"
    betas = getattr(chain, "betas", None)  # a numpy array in the official SpacedDiffusion
    if betas is not None and not torch.allclose(torch.as_tensor(betas, dtype=torch.float64).cpu(), _cosine_betas()):
        return "train_diffusion's betas are not MAR's cosine schedule"
    if target.dtype not in (torch.float32, torch.float64) or z.dtype != target.dtype:
        return f"target {target.dtype} and z {z.dtype}: diffusion_loss takes both float32 (or float64)"
    if torch.is_autocast_enabled(target.device.type):
        return "autocast is on: the head would return bfloat16 / float16, diffusion_loss takes float32"
    return None


@functools.lru_cache(maxsize=1)
def _cosine_betas():
    return reference.loss_table()[:, -1].exp()  # the table's last column is log(beta_t)


def attention_forward(self, x, *args, **kwargs):
    """timm Attention.forward(x): full attention through fastar.ops.attention (q_norm / k_norm kept)."""
    B, N, C = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    o = fastar.ops.attention(q, k, v, None, scale=self.scale)
    return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


def _attention_declines(self, x, *args, **kwargs):
    if args or kwargs:
        return "an attention mask or extra arguments (newer timm): MAR's blocks pass none"
    if self.training and self.attn_drop.p > 0:
        return "attention dropout in training (fastar's attention has none)"
    return None


ROWS = (
    Row("head", "models.diffloss", "DiffLoss", "sample", diffloss_sample, "z float32", _sample_declines),
    Row("loss", "models.diffloss", "DiffLoss", "forward", diffloss_forward,
        "the official training chain (1000 cosine steps, MSE + learned-range VB, eps), float32 target and z, no "
        "autocast", _forward_declines),
    Row("attention", "timm.models.vision_transformer", "Attention", "forward", attention_forward,
        "no attention dropout in training, no mask", _attention_declines),
)
