"""The CPU kernels' cache of large output blocks (csrc/cpu/huge_blocks.h, fastar.cpu_cache_info): a freed output of
the tiny-sequence attention (>= 4 MB) is kept and serves the next call of its size, which must still write every
element; gradients sharing one block return it only when all are freed; the limit evicts the oldest blocks."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

import fastar

MB = 1 << 20


def qkv(batch, seed=0, requires_grad=False):
    """FractalGen level-1 heads: (batch, 8, 22, 64) float32, 5.5 MB each at batch 128."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, 22, 64, generator=g).requires_grad_(requires_grad) for _ in range(3)]


@contextlib.contextmanager
def cache_limit(mb):
    """An empty cache of this limit, the default one restored after."""
    limit = fastar.cpu_cache_info()["limit_bytes"]
    fastar.empty_cpu_cache()
    fastar.set_cpu_cache_limit(mb)
    try:
        yield
    finally:
        fastar.set_cpu_cache_limit(limit // MB)
        fastar.empty_cpu_cache()


def test_reused_block_fully_written():
    q, k, v = qkv(128)
    with cache_limit(64):
        expected = fastar.ops.attention(q, k, v).clone()
        out = fastar.ops.attention(q, k, v)
        ptr, before = out.data_ptr(), fastar.cpu_cache_info()
        out.fill_(float("nan"))  # stale contents a kernel that skips an element would return
        del out
        assert fastar.cpu_cache_info()["blocks"] == before["blocks"] + 1
        again = fastar.ops.attention(q, k, v)
        after = fastar.cpu_cache_info()
        assert again.data_ptr() == ptr and after["hits"] == before["hits"] + 1
        assert torch.equal(again, expected)


def test_gradients_return_their_block_together():
    q, k, v = qkv(128, requires_grad=True)
    with cache_limit(256):
        out = fastar.ops.attention(q, k, v)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        del out
        blocks = fastar.cpu_cache_info()["blocks"]  # the output's block
        del dq, dk
        assert fastar.cpu_cache_info()["blocks"] == blocks  # dv still holds the gradients' block
        del dv
        info = fastar.cpu_cache_info()
        assert info["blocks"] == blocks + 1 and info["bytes"] >= 3 * 128 * 8 * 22 * 64 * 4


def test_limit_evicts_oldest_first():
    """Past the limit the oldest blocks go; a block past it alone goes without evicting the others."""
    small, large = qkv(128), qkv(180, seed=1)  # 5.5 MB -> a 6 MB block; 7.7 MB -> 8 MB
    with cache_limit(10):
        a, b = fastar.ops.attention(*small), fastar.ops.attention(*large)
        del a  # cached: 6 MB
        assert fastar.cpu_cache_info()["bytes"] == 6 * MB
        del b  # 14 MB > 10: the older 6 MB block goes
        info = fastar.cpu_cache_info()
        assert (info["blocks"], info["bytes"]) == (1, 8 * MB)
        misses = info["misses"]
        fastar.ops.attention(*small)  # the 8 MB block is more than a quarter larger than 6 MB: a fresh one,
        info = fastar.cpu_cache_info()  # whose return evicts the 8 MB one (6 + 8 > 10)
        assert (info["misses"], info["blocks"], info["bytes"]) == (misses + 1, 1, 6 * MB)
        fastar.ops.attention(*qkv(300, seed=2))  # 13.2 MB -> 14 MB, past the limit alone: unmapped, the 6 MB stays
        info = fastar.cpu_cache_info()
        assert (info["blocks"], info["bytes"]) == (1, 6 * MB)
    with cache_limit(0):
        fastar.ops.attention(*small)
        assert fastar.cpu_cache_info()["blocks"] == 0


def test_limit_errors():
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="mb must be an int >= 0"):
            fastar.set_cpu_cache_limit(bad)
    child = "import fastar, torch; fastar.ops.attention(*(torch.randn(128, 8, 22, 64) for _ in range(3)))"
    run = subprocess.run([sys.executable, "-c", child], env={**os.environ, "FASTAR_CPU_CACHE_MB": "lots"},
                         capture_output=True, text=True)
    assert run.returncode != 0 and "FASTAR_CPU_CACHE_MB must be a whole number of MB >= 0, got 'lots'" in run.stderr


def test_all_tensors_mode():
    """Inside cpu_cache_all_tensors a plain torch op's large output comes from the cache (a freed one is reused, its
    values all rewritten), small ones do not; it nests, and after it torch's allocator is back."""
    x = torch.randn(1024, 2048)  # 8 MB
    with cache_limit(64):
        expected = x * 2
        start = fastar.cpu_cache_info()
        with fastar.cpu_cache_all_tensors():
            y = x * 2
            y.fill_(float("nan"))
            del y  # its block returns to the cache
            with fastar.cpu_cache_all_tensors():  # nested
                z = x * 2  # served from the NaN-filled block
                small = torch.randn(16)
            info = fastar.cpu_cache_info()
            assert torch.equal(z, expected)
            assert (info["hits"] - start["hits"], info["misses"] - start["misses"]) == (1, 1)
            assert small.sum().isfinite()
        del z
        before = fastar.cpu_cache_info()
        w = x * 2  # torch's allocator again: the cache neither serves nor keeps it
        del w
        assert fastar.cpu_cache_info() == before


def test_all_tensors_mode_raw_allocations():
    """A storage resized inside (its block from the cache) and serialized works as usual."""
    with fastar.cpu_cache_all_tensors():
        t = torch.empty(0)
        t.resize_(3 << 20)  # 12 MB: a cached block behind a resized storage
        t.fill_(1.0)
        import io
        buf = io.BytesIO()
        torch.save(t, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf), t)
        del t



def test_keep_peak_keeps_a_steps_blocks_for_the_next():
    """A step under cpu_cache_all_tensors(keep_peak=True) with more large tensors alive at once than the limit: their
    blocks all stay cached after it (the limit raised to the peak), the next step takes every one of them warm (no
    fresh mapping) and computes the same, and empty_cpu_cache drops the raised limit. Without keep_peak the limit
    evicts them. Tensors under 32 MB stay with torch's allocator inside (glibc's heap reuses those warm)."""
    x = torch.randn(4096, 2048)  # 32 MB per tensor: keep_peak's smallest

    def step():
        acts = [x * i for i in range(4)]  # 128 MB alive at once
        return torch.stack([a.sum() for a in acts])

    with cache_limit(40):
        live = fastar.cpu_cache_info()["live_bytes"]  # blocks other tests' tensors still hold
        with fastar.cpu_cache_all_tensors():
            expected = step()
        info = fastar.cpu_cache_info()
        assert (info["bytes"], info["peak_bytes"]) == (32 * MB, 0)  # one block fits the limit
        fastar.empty_cpu_cache()
        with fastar.cpu_cache_all_tensors(keep_peak=True):
            assert torch.equal(step(), expected)
        info = fastar.cpu_cache_info()
        assert (info["blocks"], info["bytes"], info["live_bytes"]) == (4, 128 * MB, live)
        assert info["peak_bytes"] == live + 128 * MB and info["limit_bytes"] == 40 * MB
        with fastar.cpu_cache_all_tensors(keep_peak=True):
            assert torch.equal(step(), expected)
            small = x[:1024] * 2  # 8 MB: torch's allocator
        again = fastar.cpu_cache_info()
        assert (again["hits"] - info["hits"], again["misses"] - info["misses"], again["bytes"]) == (4, 0, 128 * MB)
        assert again["live_bytes"] == live
        fastar.empty_cpu_cache()
        assert fastar.cpu_cache_info()["peak_bytes"] == 0
        with fastar.cpu_cache_all_tensors():
            step()
        assert fastar.cpu_cache_info()["bytes"] == 32 * MB  # the set limit again
    with pytest.raises(TypeError, match="keep_peak must be a bool, got str"):
        with fastar.cpu_cache_all_tensors(keep_peak="yes"):
            pass


def test_keep_peak_min_mb():
    """min_mb sets the smallest tensor a keep_peak scope takes from the cache (HiT's G + D step: 4); the innermost
    open scope's holds, and the outer's again once it closes; cpu_cache_step passes it on; bad values are named."""
    x = torch.randn(4096, 2048)

    def live():
        return fastar.cpu_cache_info()["live_bytes"]

    with cache_limit(64):
        base = live()
        with fastar.cpu_cache_all_tensors(keep_peak=True, min_mb=4):
            a = x[:1024] * 2  # 8 MB: from the cache
            b = x[:256] * 2  # 2 MB: torch's allocator
            assert live() == base + 8 * MB
            with fastar.cpu_cache_all_tensors(keep_peak=True):  # 32 MB inside
                c = x[:1024] * 3
                assert live() == base + 8 * MB
            d = x[:1024] * 4
            assert live() == base + 16 * MB
        del a, b, c, d
        assert live() == base
        with fastar.cpu_cache_step(torch.device("cpu"), min_mb=4):
            e = x[:1024] * 2
            assert live() == base + 8 * MB
        del e
        with fastar.cpu_cache_step(torch.device("cpu")):
            e = x[:1024] * 2
            assert live() == base
    # outside keep_peak scopes the cache's 4 MB threshold holds: a min_mb there would be ignored, so it is refused
    with pytest.raises(ValueError, match="min_mb applies with keep_peak=True only .* got min_mb=4 and keep_peak=False"):
        with fastar.cpu_cache_all_tensors(min_mb=4):
            pass
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"cpu_cache_all_tensors: min_mb must be an int >= 1, got {bad!r}"):
            with fastar.cpu_cache_all_tensors(keep_peak=True, min_mb=bad):
                pass
        with fastar.use_backend("torch"), pytest.raises(ValueError, match="cpu_cache_step: min_mb must be an int"):
            with fastar.cpu_cache_step(torch.device("cpu"), min_mb=bad):
                pass


def thp_eligible(t):
    """THPeligible of the mapping that holds t's data (/proc/self/smaps): 1 where the kernel may back it with 2 MB
    pages."""
    addr, lines, inside = t.data_ptr(), open("/proc/self/smaps").read().splitlines(), False
    for line in lines:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("THPeligible:"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping in /proc/self/smaps holds {addr:#x}")


THP_ON = (os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
          and "[never]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read())


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this machine: no page kind to tell apart")
def test_page_kinds():
    """Kernel outputs and the plain all-tensors mode on 2 MB pages; a keep_peak scope's blocks on 4 KB pages, and
    neither kind serves a request of the other."""
    x = torch.randn(4096, 2048)
    with cache_limit(128):
        with fastar.cpu_cache_all_tensors():
            huge = x * 2
        with fastar.cpu_cache_all_tensors(keep_peak=True):
            small = x * 2
        assert (thp_eligible(huge), thp_eligible(small)) == (1, 0)
        assert thp_eligible(fastar.ops.attention(*qkv(128))) == 1
        del huge
        misses = fastar.cpu_cache_info()["misses"]
        with fastar.cpu_cache_all_tensors(keep_peak=True):
            other = x * 2  # the freed 32 MB block is huge: a fresh small one
        assert fastar.cpu_cache_info()["misses"] == misses + 1 and thp_eligible(other) == 0


def test_cpu_cache_step_on_the_cpu_backend_only():
    """cpu_cache_step is keep_peak's all-tensors mode where fastar's cpu backend runs (a large tensor made inside
    comes from the cache, on 4 KB pages, and raises the kept peak), and torch's allocator untouched on the torch
    backend (the official formulation) and on a device fastar's CPU kernels do not run."""
    x = torch.randn(4096, 2048)
    with cache_limit(64):
        misses = fastar.cpu_cache_info()["misses"]
        with fastar.use_backend("torch"), fastar.cpu_cache_step(torch.device("cpu")):
            y = x * 2
        with fastar.cpu_cache_step(torch.device("meta")):
            z = x * 2
        del y, z
        assert fastar.cpu_cache_info()["misses"] == misses and fastar.cpu_cache_info()["peak_bytes"] == 0
        with fastar.cpu_cache_step(torch.device("cpu")):
            y = x * 2
        info = fastar.cpu_cache_info()
        assert info["misses"] == misses + 1 and info["peak_bytes"] >= 32 * MB
        if THP_ON:
            assert thp_eligible(y) == 0
    with pytest.raises(TypeError, match="device must be a torch.device, got str"):
        with fastar.cpu_cache_step("cpu"):
            pass
