"""The rows of fastar.patch.mar: LTH14/mar's DiffLoss.sample (models/diffloss.py) on fastar.ops.diffusion_sample,
and the timm Attention of its encoder / decoder blocks (timm.models.vision_transformer, timm 0.9) on
fastar.ops.attention. The contracts are the official code's; the bodies are fastar's."""
import torch

import fastar
from fastar.patch._table import Row


def diffloss_sample(self, z, temperature=1.0, cfg=1.0):
    """DiffLoss.sample(z, temperature, cfg): the gen_diffusion chain of self.net in one op, the noise drawn from
    torch's global generator in the official order; with cfg both halves of the rows, as the official loop
    returns them (identical: the unconditional half follows the conditional one)."""
    out = fastar.ops.diffusion_sample(z, self.net, num_steps=int(self.gen_diffusion.num_timesteps),
                                      temperature=float(temperature), cfg=float(cfg))
    return torch.cat([out, out]) if cfg != 1.0 else out


def _sample_declines(self, z, temperature=1.0, cfg=1.0):
    if z.dtype != torch.float32:
        return f"z is {z.dtype} (autocast?): diffusion_sample samples in float32"
    return None


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
    Row("attention", "timm.models.vision_transformer", "Attention", "forward", attention_forward,
        "no attention dropout in training, no mask", _attention_declines),
)
