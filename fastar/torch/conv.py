"""conv3x3 as the official decoders run it: nn.Conv2d's F.conv2d (oneDNN's direct convolution on a CPU, cuDNN on a
GPU)."""
from fastar.reference.conv import conv3x3  # noqa: F401  (the formulation is the reference's)
