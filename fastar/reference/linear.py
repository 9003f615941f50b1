"""linear in plain torch: x weight^T + bias, the oracle (in float64 for the tests); bfloat16 weights widened to x's
dtype first. linear_weight_grad: a Linear's weight gradient grad^T x over all leading dims."""


def linear(x, weight, bias=None):
    y = x @ weight.to(x.dtype).t()  # (..., N)
    return y if bias is None else y + bias


def linear_weight_grad(grad, x):
    return grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
