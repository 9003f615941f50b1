"""The built extension itself: it uses the one shared C++ runtime torch uses (a static copy linked into _C crashed
on its first error message on the first GPU machine), and a C++ error reaches Python as a RuntimeError."""
import shutil
import subprocess

import pytest

import fastar


def test_cpp_error_reaches_python():
    with pytest.raises(RuntimeError, match="the cache limit must be >= 0 bytes, got -1"):
        fastar._backend._C.set_cpu_cache_limit(-1)  # TORCH_CHECK in C++, under the Python-side validation


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm is not installed")
def test_no_static_cxx_runtime_in_extension():
    path = fastar._backend._C.__file__
    symbols = "".join(subprocess.run(["nm", *flag, "--defined-only", "-C", path], capture_output=True,
                                     text=True).stdout for flag in ([], ["-D"]))  # the full table, then the dynamic
    own = ("std::ios_base::Init::Init", "std::locale::classic", "std::codecvt<char16_t, char, __mbstate_t>::do_")
    runtime = [line for line in symbols.splitlines() if any(name in line for name in own)]  # defined only in the
    # runtime's compiled sources (the GPU machine's crash was in codecvt<char16_t>::do_unshift inside _C)
    assert not runtime, f"{path} defines the C++ runtime's own symbols (libstdc++.a linked in): {runtime[:3]}"
