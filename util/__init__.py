"""Shared helpers. Importing the package also asks PyTorch's CPU allocator for huge pages.

PyTorch allocates every tensor of 2 MiB or more with a fresh ``mmap``; the kernel then maps it
4 KiB page by page on first touch. At 480p a propagated frame allocates several hundred MB of
activations. With ``THP_MEM_ALLOC_ENABLE=1`` the allocator aligns such tensors to 2 MiB and marks
them for transparent huge pages (``madvise``): 512 times fewer page faults, results bit for bit
the same. ``scripts/bench_huge_pages.py`` measures it (``docs/HUGE_PAGES.md``: a fresh 210 MB
tensor 2.85x faster, FusionNet with 4 objects at 480p 1.27x, the query encoder 1.09x).

The variable is read once, at the first CPU allocation of the process, so it is set here, on the
first import of any project module (every entry point imports one before it creates a tensor),
and only if the user has not set it: ``THP_MEM_ALLOC_ENABLE=0`` turns it off. It has an effect on
Linux when ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` (with ``always`` the
kernel uses huge pages anyway; with ``never`` nothing changes). A program that imports the
project after its first tensor keeps the allocator as it was.
"""

from __future__ import annotations

import os
import sys

#: PyTorch's switch for huge-page aligned CPU allocations (read once per process).
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages(environ: dict | None = None, platform: str | None = None) -> bool:
    """Set :data:`HUGE_PAGES_ENV` to ``1`` unless already set; True if it now asks for them."""
    env = os.environ if environ is None else environ
    if not (platform or sys.platform).startswith("linux"):
        return False
    env.setdefault(HUGE_PAGES_ENV, "1")
    return env[HUGE_PAGES_ENV] == "1"


def transparent_huge_pages_mode() -> str | None:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``); None where unknown."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    start, stop = text.find("["), text.find("]")
    return text[start + 1:stop] if 0 <= start < stop else None


request_huge_pages()
