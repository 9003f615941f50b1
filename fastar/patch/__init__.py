"""Drop-in acceleration of the official codebases: `fastar.patch.var(model)` / `.mar(model)` / `.fractalgen(model)`
(or without a model, on the classes of the official modules already imported) swap the hot spots of
FoundationVision/VAR, LTH14/mar and LTH14/fractalgen for fastar ops, one row of a table
per swapped attribute; `undo()` restores the originals and `report(model)` says which rows apply and why not.
State-dict keys are untouched (only methods change), so checkpoints load as before.

Each row's replacement runs when its condition holds for the instance at call time and calls the original
otherwise, so a patched model is never wrong, only not faster; report() names the reason.
"""
from fastar.patch import linear as _linear
from fastar.patch._table import Row, apply, report, undo
from fastar.patch.fractalgen import ROWS as FRACTALGEN_ROWS
from fastar.patch.mar import ROWS as MAR_ROWS
from fastar.patch import var as _var
from fastar.patch.var import ROWS as VAR_ROWS

__all__ = ["Row", "var", "mar", "fractalgen", "undo", "report", "VAR_ROWS", "MAR_ROWS", "FRACTALGEN_ROWS"]


def var(model=None, *, attention=True, quantizer=True, sampling=True, decoder=True, linear=False):
    """Patch FoundationVision/VAR: `model` (a VAR, VQVAE, or any module holding them) in place, or without it the
    classes of models.basic_var / models.quant / models.basic_vae and the global of models.var already imported.
    Groups: attention (SelfAttention: block-causal training, a preallocated KV cache in inference), quantizer
    (VectorQuantizer2's multi-scale loops), sampling (the top-k / top-p sampler VAR.autoregressive_infer_cfg calls,
    one fastar.ops.sample_categorical pass: the same tokens for a seed), decoder (the VQVAE's Decoder, Upsample2x,
    ResnetBlock and AttnBlock forwards on fastar's decoder fast path: each nearest-2x upsample + conv as one phase
    conv, in-place SiLU and residuals at inference, torch's SDPA in AttnBlock; the encoder's blocks too).
    linear (off unless asked; with a model only): its nn.Linear layers (fastar.patch.linear) and its FFNs (fc1 and
    the tanh GELU as one oneDNN product with the GELU in its epilogue, then fc2). The sampler is a
    module-level function, looked up as a global of the module that defines the VAR class: with a model holding a
    VAR, that module's global is replaced, so every VAR of that module samples through fastar until undo().
    Returns the rows applied."""
    groups = {"attention": attention, "quantizer": quantizer, "sampling": sampling, "decoder": decoder}
    linear_rows = _linear.rows(model, linear)
    return apply([r for r in VAR_ROWS if groups[r.group]] + linear_rows + ([_var.FFN_ROW] if linear_rows else []),
                 model, caller="fastar.patch.var")


def _linear_rows(model, wanted):
    """The linear group of MAR and FractalGen, whose blocks' MLPs are timm's Mlp."""
    rows = _linear.rows(model, wanted)
    return rows + ([_linear.MLP_ROW] if rows else [])


def mar(model=None, *, attention=True, head=True, loss=True, linear=False):
    """Patch LTH14/mar: `model` (a MAR, or any module holding its DiffLoss / timm blocks) in place, or without it
    the classes of models.diffloss and timm.models.vision_transformer already imported. Groups: head
    (DiffLoss.sample as one fastar.ops.diffusion_sample), loss (DiffLoss.forward, the training loss, through
    fastar.ops.diffusion_loss), attention (the timm Attention of the encoder and decoder blocks), linear (off unless
    asked; with a model only: its nn.Linear layers, fastar.patch.linear, and timm's Mlp, fc1 and its GELU as one
    oneDNN product). Returns the rows applied."""
    groups = {"attention": attention, "head": head, "loss": loss}
    return apply([r for r in MAR_ROWS if groups[r.group]] + _linear_rows(model, linear), model,
                 caller="fastar.patch.mar")


def fractalgen(model=None, *, attention=True, sampling=True, linear=False):
    """Patch LTH14/fractalgen: `model` (a FractalGen, or any of its levels) in place, or without it the classes of
    models.ar, models.mar and models.pixelloss already imported. Groups: attention (the manual attentions of the
    AR level, causal with RoPE in training and over its KV cache in sampling, of the MAR levels and of PixelLoss,
    through fastar.ops.attention / attention_decode), sampling (PixelLoss.sample's categorical draws through
    fastar.ops.sample_categorical), linear (off unless asked; with a model only: its nn.Linear layers,
    fastar.patch.linear, and timm's Mlp as in mar()). Returns the rows applied."""
    groups = {"attention": attention, "sampling": sampling}
    return apply([r for r in FRACTALGEN_ROWS if groups[r.group]] + _linear_rows(model, linear), model,
                 caller="fastar.patch.fractalgen")
