"""Inference: the interactive core, the memory bank, semi-supervised propagation, DAVIS robot.

Importing the package imports :mod:`util` first, which asks PyTorch for huge-page CPU allocations
before the first tensor is created (see ``util/__init__.py``).
"""

import util  # noqa: F401
