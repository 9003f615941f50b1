"""linear in plain torch: x weight^T + bias, the oracle (in float64 for the tests); bfloat16 weights widened to x's
dtype first. linear_weight_grad: a Linear's weight gradient grad^T x over all leading dims."""


def linear(x, weight, bias=None):
    y = x @ weight.to(x.dtype).t()  # (..., N)
    return y if bias is None else y + bias


def linear_weight_grad(grad, x):
    rows = x.shape[:-1].numel()  # not reshape(-1, 0), which a zero-width x cannot take
    return grad.reshape(rows, grad.shape[-1]).t() @ x.reshape(rows, x.shape[-1])
