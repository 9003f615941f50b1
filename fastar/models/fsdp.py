"""Fully sharded data parallel training (torch's FSDP2, `fully_shard`) for the models past one process's memory:
VAR-d30 / d36 (2.0 B / 2.3 B parameters) and DALL-E's 12 B configuration.

    model = build(...)                       # or on the meta device, then to_empty + init / load after shard
    shard(model)                             # every process, inside torch.distributed's process group
    opt = torch.optim.AdamW(model.parameters(), ...)  # built on the shards, after shard()
    ...                                      # forward / backward / step as usual; fastar's ops see whole tensors
    sd = full_state_dict(model)              # every process calls it; whole tensors, for save or load_state_dict

Each transformer block is one unit (its parameters gathered before its forward, freed after, gradients
reduce-scattered), then the root takes the rest (embeddings, heads, tokenizers). `python -m fastar train ... --fsdp`
runs the digits trainers this way (tests/test_fsdp.py: the same weights as DDP).
"""
import torch
from torch import nn

# The ModuleList attributes that hold a model's repeated blocks: VAR, DALL-E, FractalGen's levels (blocks),
# MAR's encoder / decoder (encoder_blocks, decoder_blocks) and its diffusion head (res_blocks).
BLOCK_LISTS = ("blocks", "encoder_blocks", "decoder_blocks", "res_blocks")


def units(model: nn.Module) -> list[nn.Module]:
    """The blocks of `model` that shard() makes units: the elements of every ModuleList named in BLOCK_LISTS."""
    return [block for name, m in model.named_modules() if isinstance(m, nn.ModuleList)
            and name.rsplit(".", 1)[-1] in BLOCK_LISTS for block in m]


def shard(model: nn.Module, *, mesh=None, mp_policy=None, reshard_after_forward: bool = True) -> nn.Module:
    """`model` sharded in place over the process group (or `mesh`): fully_shard on each of units(model), then on
    the root; returns it. mp_policy: an FSDP MixedPrecisionPolicy (e.g. bf16 parameters, fp32 reductions).
    Call it on every process, on the same model (same seed, or meta then initialized alike), before the optimizer."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if not isinstance(model, nn.Module):
        raise TypeError(f"shard: model must be an nn.Module, got {type(model).__name__}")
    if not torch.distributed.is_initialized():
        raise RuntimeError("shard: no process group: run under torchrun and call "
                           "torch.distributed.init_process_group first")
    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
          "mp_policy": mp_policy if mp_policy is not None else MixedPrecisionPolicy()}
    for block in units(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def full_state_dict(model: nn.Module, *, cpu_offload: bool = False) -> dict:
    """The whole-tensor state dict of a shard()ed model, on every process (cpu_offload: on rank 0 only, in CPU
    memory, the others get {}): a collective, so every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))
