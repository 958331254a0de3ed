"""Torch reference of the PiD network (pure ``nn.Module``: no I/O, no device strings).

- :class:`PidNet`: ``forward`` = one velocity evaluation; ``prepare`` (per decode) and
  ``step`` (per sampler step) are the hoisted halves used by exporters and backends.
- :class:`Prepared`: the per-decode conditioning tensors.
- :func:`random_init`: seeded deterministic weights for smoke runs.
"""

from pid_trt.model.init import random_init
from pid_trt.model.network import PidNet, Prepared

__all__ = ["PidNet", "Prepared", "random_init"]
