"""ESTIMATE (a model, not a measurement) of the DRAM bytes one encode scale moves on a GPU: VAR's reference loop
(torch ops) against fastar's CUDA kernels, at VAR-d16 shapes.    python -m benchmarks.msq_bytes_estimate

Basis: each op reads its inputs and writes its outputs once from DRAM; the codebook (512 KiB) and the small
per-scale maps stay in L2 once loaded (counted once); the Phi conv reads its input and writes its output.
fastar's residual update and its fused down + search are two kernels (no down may start before the whole update
is done), so f_rest is read again right after it is written: counted as DRAM here, although at these shapes it is a
1 MiB map that the 40-50 MB L2 of an A100 / H100 would most likely still hold.
"""
B, C, H, V, F32 = 32, 32, 16, 4096, 4
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
MAP = B * C * H * H * F32  # one (B, C, H, W) float32 map: 1 MiB


def reference_bytes(si, pn):
    last, N = si == len(PATCH_NUMS) - 1, B * pn * pn
    z = N * C * F32
    b = 2 * MAP if last else MAP + 3 * z     # area-down (or none) and the permuted copy of z
    b += z + N * F32 + V * C * F32           # ||z||^2, the codebook
    dist = 4 * N * V * F32                   # ||z||^2 + ||e||^2 writes N x V; addmm_ reads and writes it; argmin reads
    b += dist + N * 8 + 2 * z                # indices, embedding gather and its permute
    b += 2 * z if last else z + MAP          # bicubic-up (or the contiguous copy at the last scale)
    b += 9 * MAP                             # Phi: h * (1 - r), conv, * r, add
    b += 6 * MAP                             # f_hat += h, f_rest -= h
    return b, dist


def fastar_bytes(si, pn):
    N = B * pn * pn
    b = 5 * MAP if si else 0           # msq_update_kernel: f_hat, f_rest, h in; f_hat, f_rest out (none at si = 0)
    b += MAP + V * C * F32 + N * 8     # msq_down_search_kernel: f_rest and the codebook in, indices out; the rows
    #                                    live in shared memory (at pn = H vq_nearest reads f_rest as its rows)
    b += N * 8 + MAP                   # msq_up: indices in (codes from L2), the upsampled map out
    return b + 2 * MAP                 # one conv: Phi's blend is folded into its weight


if __name__ == "__main__":
    MiB = 2**20
    print("| si | pn | reference MiB | of which the N x V distances | fastar MiB | ratio |\n|---|---|---|---|---|---|")
    total_ref = total_ours = 0
    for si, pn in enumerate(PATCH_NUMS):
        (ref, dist), ours = reference_bytes(si, pn), fastar_bytes(si, pn)
        total_ref, total_ours = total_ref + ref, total_ours + ours
        print(f"| {si} | {pn} | {ref / MiB:.1f} | {dist / MiB:.1f} | {ours / MiB:.1f} | {ref / ours:.1f}x |")
    print(f"| all | | {total_ref / MiB:.0f} | | {total_ours / MiB:.0f} | {total_ref / total_ours:.1f}x |")
