"""The training layer: one module per trained network, each holding its stage presets, data
recipe, initialisation, training forward and loss (``s2m``, ``propagation`` with MiVOS and STCN,
``fusion``), and what they share (``common``). The entry points are ``train_s2m.py``,
``train_prop.py`` and ``train_fusion.py``; the generic loop is :mod:`util.trainer`.

Importing the package imports :mod:`util` first, which asks PyTorch for huge-page CPU allocations
before the first tensor is created (see ``util/__init__.py``).
"""

import util  # noqa: F401
