"""Tensors made from a weight once per version of it (the decoders' phase weights, conv3x3's Winograd transform)."""
import weakref

import torch

_PREPARED = {}  # (kind, id(weight)) -> (weak reference to weight, its key, the prepared tensor)


def prepared(kind, weight, make):
    """make(weight), made once per parameter version at inference (key: data pointer, version counter, dtype, device,
    shape, strides, offset; load_state_dict and optimizer steps bump the version, writes through .data do not: such
    code must not run between calls) and dropped with the weight; under autograd per call, through the parameter;
    under torch.compile per call too (the graph holds no cache)."""
    if torch.is_grad_enabled() and weight.requires_grad or torch.compiler.is_compiling():
        return make(weight)
    slot = (kind, id(weight))
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.shape, weight.stride(),
           weight.storage_offset())
    hit = _PREPARED.get(slot)
    if hit is None or hit[0]() is not weight or hit[1] != key:
        ref = weakref.ref(weight, lambda _, slot=slot: _PREPARED.pop(slot, None))  # dropped with the parameter
        hit = _PREPARED[slot] = (ref, key, make(weight.detach()))
    return hit[2]
