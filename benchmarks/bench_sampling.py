"""Token draws against the official code's own formulation, same logits, same seed:
- sample_categorical at VAR's logits (B*L x 4096, its demo's top_k 900, top_p 0.96; 680 positions per image, 2 images)
  against VAR's models/helpers.py sample_with_top_k_top_p_ (topk, then sort + softmax + cumsum for top-p, softmax +
  torch.multinomial; fastar.torch.sampling);
- PixelLoss's CFG draw at FractalMAR-in64's flags (cfg 6.5, temperature 1.02, filter_threshold 1e-4; 4096 pixels: one
  in64 image at 64 x 64, the [cond; uncond] rows x 256) as fastar's PixelLoss.sample runs it (guided_logits, then
  fastar.ops.sample_categorical) against FractalGen's models/pixelloss.py sample in torch ops (official_pixel_draw).

Agreement, from one untimed call of each contender: the share of rows drawn alike (both race the exponentials
torch.multinomial draws from the seed, so they differ only where the last bits of two ratios decide). The note
checks each contender's draws against the exact (float64) filtered probabilities: the share of draws the filters
allow, and z, the draws' mean probability against its expectation in standard errors (|z| < 3 for a sampler of that
distribution); the PixelLoss row also gives the largest difference between fastar's and the official probabilities.

FASTAR_BENCH_SAMPLING_SCALE multiplies the row counts (bigger batches on a quiet machine)."""
import os

import torch

import fastar
from benchmarks.harness import compare
from fastar.models.fractalgen.pixelloss import guided_logits
from fastar.reference import sampling as ref
from fastar.torch import sampling as official

SCALE = float(os.environ.get("FASTAR_BENCH_SAMPLING_SCALE", 1))
VAR_ROWS, VAR_FILTERS = int(2 * 680 * SCALE), dict(top_k=900, top_p=0.96)
PIXELS, CFG, TEMPERATURE, FILTER_THRESHOLD = int(4096 * SCALE), 6.5, 1.02, 1e-4


def seeded():
    return torch.Generator().manual_seed(1)


def draws_note(probs, drawn):
    """'name: allowed share, z' for each contender's draws ({name: (R,) indices}) against probs (R, V) float64, the
    exact filtered probabilities (0 where a filter drops the token)."""
    s2, s3 = (probs ** 2).sum(1), (probs ** 3).sum(1)  # E and E[.^2] of a row's drawn probability
    se = (s3 - s2 ** 2).sum().sqrt() / probs.shape[0]
    parts = []
    for name, idx in drawn.items():
        p = probs.gather(1, idx[:, None])[:, 0]
        parts.append(f"{name}: {(p > 0).double().mean().item():.2%} of the draws allowed, "
                     f"z {((p.mean() - s2.mean()) / se).item():+.2f}")
    return "; ".join(parts)


def test_sample_categorical(benchmark):
    name = "official (topk + sort + cumsum + softmax + multinomial)"
    benchmark.group = f"sample_categorical VAR d16 2 images x 680 positions ({VAR_ROWS} x 4096, {VAR_FILTERS}) float32"
    logits = torch.randn(VAR_ROWS, 4096, generator=torch.Generator().manual_seed(0)) * 3

    def run(fn):
        return lambda: fn(logits, generator=seeded(), **VAR_FILTERS)

    drawn = {"fastar": run(fastar.ops.sample_categorical)(), name: run(official.sample_categorical)()}
    e, _ = ref.keep_mask(logits.double(), **VAR_FILTERS)
    exact = e / e.sum(1, keepdim=True)
    same = (drawn["fastar"] == drawn[name]).double().mean().item()
    compare(benchmark, run(fastar.ops.sample_categorical), {name: run(official.sample_categorical)}, baseline=name,
            rounds=7, op="sample_categorical", agreement={name: same},
            note="Draws against the exact top-k / top-p probabilities: " + draws_note(exact, drawn))


def official_pixel_probs(logits, temperature, cfg, filter_threshold):
    """The distribution of one channel as FractalGen's PixelLoss.sample makes it under CFG (models/pixelloss.py;
    torch ops only): logits (2N, 256) [cond; uncond] times temperature (it multiplies); where the conditional
    probability is below filter_threshold the unconditional logit is raised to the conditional one shifted to the
    unconditional maximum (in place, by mask); the mix, softmax. -> (N, 256)."""
    logits = logits * temperature
    n = logits.shape[0] // 2
    cond, uncond = logits[:n], logits[n:]
    low = torch.softmax(cond, dim=-1) < filter_threshold
    shifted = cond - torch.max(cond, dim=-1, keepdim=True)[0] + torch.max(uncond, dim=-1, keepdim=True)[0]
    uncond[low] = torch.max(uncond, shifted)[low]
    return torch.softmax(uncond + cfg * (cond - uncond), dim=-1)


def official_pixel_draw(logits, temperature, cfg, filter_threshold, generator=None):
    """official_pixel_probs, then torch.multinomial: (N,) indices."""
    probs = official_pixel_probs(logits, temperature, cfg, filter_threshold)
    return torch.multinomial(probs, num_samples=1, generator=generator).reshape(-1)


def fastar_mixed(logits, temperature, cfg, filter_threshold):
    logits = logits * temperature
    n = logits.shape[0] // 2
    return guided_logits(logits[:n], logits[n:], cfg, filter_threshold)


def fastar_pixel_draw(logits, temperature, cfg, filter_threshold, generator=None):
    """The same draw as fastar's PixelLoss.sample makes it: guided_logits, then fastar.ops.sample_categorical."""
    return fastar.ops.sample_categorical(fastar_mixed(logits, temperature, cfg, filter_threshold), generator=generator)


def test_pixelloss_cfg_draw(benchmark):
    name = "official (FractalGen's PixelLoss: filter_threshold lift + cfg mix + softmax + multinomial)"
    benchmark.group = (f"PixelLoss CFG draw, FractalGen {PIXELS} pixels ({2 * PIXELS} x 256 [cond; uncond], cfg {CFG}, "
                       f"temperature {TEMPERATURE}, filter_threshold {FILTER_THRESHOLD}) float32")
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(PIXELS, 256, generator=g) * 3
    uncond = 0.5 * cond + torch.randn(PIXELS, 256, generator=g) * 2  # an unconditional model: blurrier, related
    logits = torch.cat([cond, uncond])
    args = (TEMPERATURE, CFG, FILTER_THRESHOLD)

    def run(fn):
        return lambda: fn(logits, *args, generator=seeded())

    drawn = {"fastar": run(fastar_pixel_draw)(), name: run(official_pixel_draw)()}
    # the kernel draws from its logits' softmax (float64 here); the official code from its float32 softmax
    e, _ = ref.keep_mask(fastar_mixed(logits, *args).double())
    diff = (e / e.sum(1, keepdim=True) - official_pixel_probs(logits, *args).double()).abs().max().item()
    same = (drawn["fastar"] == drawn[name]).double().mean().item()
    compare(benchmark, run(fastar_pixel_draw), {name: run(official_pixel_draw)}, baseline=name, rounds=7,
            op="sample_categorical", agreement={name: same},
            note=f"Filtered probabilities, fastar's against the official: max abs diff {diff:.1e}. Draws against the "
                 f"exact ones (the official formulation in float64): "
                 + draws_note(official_pixel_probs(logits.double(), *args), drawn))
