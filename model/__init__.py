"""The networks: S2M, the propagation networks (MiVOS, STCN), FusionNet, their parts.

Importing the package imports :mod:`util` first, which asks PyTorch for huge-page CPU allocations
before the first tensor is created (see ``util/__init__.py``).
"""

import util  # noqa: F401
