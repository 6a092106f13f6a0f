"""Training and evaluation datasets, augmentation, the synthetic DAVIS-layout generator.

Importing the package imports :mod:`util` first, which asks PyTorch for huge-page CPU allocations
before the first tensor is created (see ``util/__init__.py``).
"""

import util  # noqa: F401
