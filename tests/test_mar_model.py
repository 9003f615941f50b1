"""MAR on fastar: the official parameter counts and names, and seeded sampling against the float64 reference."""
import pytest
import torch

import fastar
from fastar.models.mar import mar
from tests.tolerance import assert_close


def count(size):
    with torch.device("meta"):
        return sum(p.numel() for p in mar(size).parameters())


def test_parameter_counts():
    assert count("base") == 207_924_768  # the official MAR-B with its released d6 w1024 head
    # L and H: analytic counts of shared/reference/mar-fractalgen.md A3 (478.3M, 942.4M), to 0.1M.
    assert round(count("large") / 1e5) == 4783 and round(count("huge") / 1e5) == 9424


def test_official_names():
    with torch.device("meta"):
        keys = set(mar("base").state_dict())
    for k in ("class_emb.weight", "fake_latent", "z_proj_ln.bias", "encoder_pos_embed_learned", "mask_token",
              "encoder_blocks.11.attn.qkv.weight", "decoder_blocks.0.mlp.fc2.bias", "decoder_norm.weight",
              "diffusion_pos_embed_learned", "diffloss.net.time_embed.mlp.2.weight", "diffloss.net.cond_embed.bias",
              "diffloss.net.res_blocks.5.adaLN_modulation.1.weight", "diffloss.net.final_layer.linear.bias"):
        assert k in keys, k
    assert not any("norm_final" in k for k in keys)  # no affine: no parameters, as in the checkpoints


def tiny_mar(seed=0):
    torch.manual_seed(seed)
    model = mar("base", width=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32, img_size=64, buffer_size=4,
                class_num=10, num_sampling_steps=8).eval()
    for p in model.diffloss.parameters():  # the zero-initialised head would predict eps = 0 throughout
        torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sample_tokens(cfg):
    model = tiny_mar()
    labels = torch.tensor([3, 7])

    def sample(m, backend):
        with fastar.use_backend(backend):
            return m.sample_tokens(2, num_iter=4, cfg=cfg, labels=labels, generator=torch.Generator().manual_seed(1))

    out = sample(model, "cpu")
    assert out.shape == (2, 16, 4, 4)
    ref32 = sample(model, "reference")
    ref64 = sample(tiny_mar().double(), "reference")
    assert_close("mar_sample_tokens", out, ref64, ref32)
