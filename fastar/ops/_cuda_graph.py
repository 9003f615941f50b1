"""An op call captured as a CUDA graph once and replayed: for ops whose loop launches thousands of small kernels
(diffusion_sample: 100 steps x ~40 launches), so that a call costs one graph launch. One capture per distinct call
(the key: shapes, the storage the kernels read, the scalars baked into their parameters), at most MAX_GRAPHS kept.

Random draws: the generator (the device's default one when None) is registered with the graph and its state is
restored after the warm-up run that precedes the capture, so each replay draws what the eager call would from the
same state and advances the generator as it does (torch's graph-safe Philox offsets)."""
import collections

import torch

MAX_GRAPHS = 4
_GRAPHS = collections.OrderedDict()  # key -> (graph, static inputs, static output, tensors kept alive)


def run(key, fn, inputs, generator, keep):
    """fn(*inputs) -> tensor on a CUDA device, through a graph captured for `key` on first use: the inputs are copied
    into the graph's own, and a copy of its output is returned. keep: what the captured kernels read besides the
    inputs (weights), held as long as the graph is."""
    entry = _GRAPHS.get(key)
    if entry is None:
        entry = _GRAPHS[key] = _capture(fn, inputs, generator, keep)
        while len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    graph, static, out, _ = entry
    for s, x in zip(static, inputs):
        s.copy_(x)
    graph.replay()
    return out.clone()


def clear():
    """Drops every captured graph (and the memory of its pool)."""
    _GRAPHS.clear()


def _capture(fn, inputs, generator, keep):
    device = inputs[0].device
    index = device.index if device.index is not None else torch.cuda.current_device()
    gen = generator if generator is not None else torch.cuda.default_generators[index]
    static = [x.clone() for x in inputs]
    state = gen.get_state()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn(*static)  # warm-up: cuBLAS handles and workspaces exist before the capture
    torch.cuda.current_stream(device).wait_stream(side)
    gen.set_state(state)  # the warm-up's draws undone: the first replay draws what an eager call would
    graph = torch.cuda.CUDAGraph()
    if generator is not None:  # the default generator is registered by the capture itself
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, static, out, (keep, generator)
