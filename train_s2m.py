"""Train the scribble-to-mask (S2M) network (REFERENCE.md f.4).

Examples::

    # CPU smoke run on generated data (lite network, minutes on a laptop)
    python train_s2m.py --preset lite --data synthetic --iterations 200 --output runs/s2m_lite

    # the paper's recipe (2 GPUs, batch 16 each, 80K iterations, DeepLab initialisation)
    torchrun --nproc_per_node 2 train_s2m.py --data-root .. \\
        --deeplab best_deeplabv3plus_resnet50_voc_os16.pth --output runs/s2m

    # resume an interrupted run (restores optimizer, schedule, RNG and data position)
    python train_s2m.py --output runs/s2m --resume auto

Data: the static image/mask sets (FSS-1000, DUTS-TR, DUTS-TE, ECSSD, BIG, HRSOD) used twice;
``--lvis-root DIR [--lvis-json FILE]`` adds the LVIS v1 train instances (as the reference
does). Output: ``<output>/s2m_<it>.pth`` and ``s2m_final.pth`` (plain state dicts:
``python -m model.checkpoint --kind s2m --preset PRESET FILE``), ``s2m_checkpoint.pth``
(resumable), ``config.json``, ``train.log``, ``tb/``, ``images/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from train import s2m


def main(argv: Sequence[str] | None = None) -> int:
    """Train S2M (:mod:`train.s2m`); 0 on success, 2 for bad input (one line naming it)."""
    return s2m.main(argv, prog="train_s2m.py", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
