"""The annotation GUI (``python interactive_gui.py``).

* :mod:`gui.models`: the architectures the tool can run and how their networks are built;
* :mod:`gui.controller`: the Qt-free session (inference core, per-frame edits, undo, save,
  session files, replay actions); everything the window does goes through it;
* :mod:`gui.render`: Qt-free drawing of overlays, strokes and the local-control box;
* :mod:`gui.worker`: the worker thread that runs every network call off the UI thread, with
  progress and cancel;
* :mod:`gui.app`: the PySide6 window.

Only :mod:`gui.worker` and :mod:`gui.app` import Qt.

Importing the package imports :mod:`util` first, which asks PyTorch for huge-page CPU allocations
before the first tensor is created (see ``util/__init__.py``).
"""

import util  # noqa: F401
