"""The one tolerance rule of fastar's tests (habit 10): fastar/tolerance.py, shared with `fastar selftest`."""
from fastar.tolerance import K, error_and_bound


def assert_close(op, out, ref64, ref_lowp, scale=None):
    """out within K[op] x the low-precision reference's error of the float64 reference (fastar.tolerance)."""
    err, bound, ref_err = error_and_bound(op, out, ref64, ref_lowp, scale)
    assert err <= bound, f"{op}: max error {err:.3g} > {K[op]} x reference error {ref_err:.3g} (+ floor)"
    return err, ref_err


__all__ = ["K", "assert_close", "error_and_bound"]
