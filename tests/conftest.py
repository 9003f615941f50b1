"""The one parametrize grid of fastar's tests: backend x dtype x shape (habit 9).

Backends: cpu, simt (the CUDA kernels under the CPU emulator) and cuda. cuda is skipped only without a GPU;
simt is skipped when fastar._simt is not built, unless FASTAR_REQUIRE_SIMT=1 (CI), where that is a failure.
"""
import os

import pytest
import torch

import fastar

BACKENDS = ("cpu", "simt", "cuda")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def backend_device(backend):
    return "cuda" if backend == "cuda" else "cpu"


@pytest.fixture(params=BACKENDS)
def backend(request):
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    if not fastar.backends()[name]:
        if name == "simt" and os.environ.get("FASTAR_REQUIRE_SIMT") == "1":
            pytest.fail("FASTAR_REQUIRE_SIMT=1 but fastar._simt is not built (build with FASTAR_SIMT=1)")
        pytest.skip(f"the {name} backend is not built")
    with fastar.use_backend(name):
        yield name


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param
