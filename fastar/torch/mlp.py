"""mlp as a PyTorch port runs it: F.linear, F.gelu, F.linear and the residual add, each a pass over memory."""
from fastar.reference.mlp import mlp  # noqa: F401  (the formulation is the reference's)
