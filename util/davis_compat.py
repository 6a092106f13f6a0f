"""Make ``davisinteractive`` 1.0.4 (the official DAVIS interactive robot, metrics and session)
run on today's stack (NumPy 2.x, pandas 2/3, networkx 3, scikit-image >= 0.19).

Call :func:`ensure_compat` before importing anything from ``davisinteractive``::

    from util.davis_compat import ensure_compat
    ensure_compat()
    from davisinteractive.session import DavisInteractiveSession

``ensure_compat()`` is idempotent and cheap after the first call.  It imports the package
itself (so the call must come first) and then patches *module attributes of davisinteractive*
only; NumPy, pandas and networkx themselves are left untouched after it returns.  The
package's code is not modified on disk and its behaviour is kept: every patch restores what the
old library versions did.

Patches (each one was found by actually running the robot, the metrics, a full local
``DavisInteractiveSession`` and ``get_global_summary`` on NumPy 2.4 / pandas 3.1 /
networkx 3.6 / scikit-image 0.26):

1. **Removed NumPy aliases.**  ``np.int`` / ``np.float`` (removed in NumPy 1.24) are used
   as dtypes all over the package (metrics, robot, scribble rasterisation, service, dataset),
   and ``np.trapz`` (deprecated in NumPy 2.0, absent from the installed 2.4;
   ``np.trapezoid`` is the same function) computes the AUC in
   ``EvaluationService.summarize_report``.  Each davisinteractive module's global ``np`` is
   replaced by a view of NumPy that forwards every attribute to the real module and adds
   only ``int`` (= builtin ``int``, what ``np.int`` always was), ``float`` (= builtin
   ``float``) and ``trapz`` (= ``np.trapezoid``).  ``np.bool`` exists again in NumPy 2 (as
   ``np.bool_``) and needs nothing (setting it to the builtin would break other libraries).
   One default argument is evaluated at import time
   (``Davis.load_annotations(..., dtype=np.int)`` in ``dataset/davis.py``), so while the
   package is imported ``numpy.int`` / ``numpy.float`` are added to the real NumPy module for
   the duration of that import only and removed again right after (the package's
   third-party dependencies are imported before, so nothing else sees them).
2. **networkx 3** removed ``from_scipy_sparse_matrix``; the robot's ``_mask2graph`` calls it to
   turn the skeleton's radius-neighbours graph into a graph.  The robot module's global ``nx``
   is replaced by a view of networkx that adds ``from_scipy_sparse_matrix`` =
   ``nx.from_scipy_sparse_array`` (same graph, same ``weight`` edge attribute).
3. **pandas 2/3: report dtypes and ``groupby().mean()``.**  ``LocalStorage`` starts from an
   empty ``DataFrame(columns=...)`` (all ``object`` columns) and grows it with ``pd.concat``.
   Old pandas ignored the empty frame when choosing the result dtypes; pandas 3 keeps
   ``object`` for every column.  ``EvaluationService.summarize_report`` (run by
   ``session.next()`` when the last sample ends, i.e. what ``get_global_summary`` returns) then
   does ``groupby([...]).mean()`` over all remaining columns, including the string
   ``session_id`` column and the ``object`` numeric columns; old pandas silently dropped such
   "nuisance" columns, pandas >= 2 raises ``TypeError: agg function failed [how->mean,
   dtype->object]``.  Two wrappers restore the old results:

   * ``LocalStorage.get_report`` returns the report with its numeric columns converted to
     numbers (``pd.to_numeric``), as old pandas produced them; ``sequence`` and
     ``session_id`` are untouched.  This also gives users of ``session.get_report()`` a
     numeric table.
   * ``EvaluationService.summarize_report`` converts the numeric columns the same way (for
     reports that do not come from ``get_report``) and drops ``session_id`` before calling
     the original method, which is exactly what old pandas' nuisance-column dropping did (the
     original drops ``session_id`` right after the mean anyway).

4. **scikit-image >= 0.19: non-deterministic skeletons.**  The robot skeletonises every
   error region with ``skimage.morphology.medial_axis``, which orders equally good skeleton
   pixels by a random permutation.  Until scikit-image 0.18 that permutation came from a
   fresh ``np.random.RandomState(0)`` on every call, so the robot was deterministic; current
   scikit-image draws it from an unseeded ``np.random.default_rng()``, so the same prediction
   gets slightly different scribbles on every call (found by generating the same data twice:
   the scribble files differed).  The robot module's global ``medial_axis`` is replaced by a
   wrapper that hands scikit-image a tie-breaker whose ``permutation`` is exactly the old
   ``RandomState(0).permutation``, restoring the old, reproducible scribbles (on the
   scikit-image versions whose parameter was called ``random_state`` the seed 0 is passed).
   The same wrapper remembers the look-up tables ``medial_axis`` rebuilds on every call
   (``_MedialAxisTables``: same skeletons, about 30 ms less per skeleton, most of the robot's
   time on small frames).

7. **NumPy 2 and the compiled mask API.**  The bundled ``mask_api`` extension (the COCO RLE
   code the remote connector uses to send masks) encodes unchanged, but decoding looks up
   ``np.NPY_OWNDATA`` on the Python NumPy module at run time, and NumPy 2 no longer exports
   that name (``AttributeError``).  The extension module's global ``np`` is replaced by a view
   of NumPy that adds ``NPY_OWNDATA`` = ``NPY_ARRAY_OWNDATA`` (4), the value the name always
   had, so ``decode_mask`` / ``decode_batch_masks`` work again and hand the decoded buffer to
   NumPy as before.  The local session (the one used here) never decodes; the tests
   round-trip masks through both directions anyway.

Checked and found working unchanged on pandas 3.1 (so deliberately not patched): the
multi-index ``df.loc[it, seq, idx, :]`` reads/writes of ``EvaluationService._reconstruct_report``
(the timeout back-fill), the ``pd.concat`` growth of the report, ``Davis.check_files``, the
scribble utilities (``scribbles2mask``, ``fuse_scribbles``), the robot's other
scikit-image calls (``rank.minimum``/``maximum`` with float-radius disks) and its
scikit-learn ``radius_neighbors_graph``, the mask API's encoding, the JSON summary
file (NumPy floats are ``float`` subclasses) and the CSV report writing.

"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
import types
from typing import Any

import numpy

logger = logging.getLogger(__name__)

__all__ = ["ensure_compat", "is_patched"]

_LOCK = threading.Lock()
_DONE = False

#: davisinteractive modules whose global ``np`` is swapped for the NumPy view.
_NUMPY_USERS = (
    "davisinteractive.dataset.davis",
    "davisinteractive.metrics.jaccard",
    "davisinteractive.robot.interactive_robot",
    "davisinteractive.utils.scribbles",
    "davisinteractive.utils.operations",
    "davisinteractive.utils.mask",
    "davisinteractive.utils.visualization",
    "davisinteractive.evaluation.service",
    "davisinteractive.storage.local",
    "davisinteractive.third_party.mask_api.mask",
)

#: Every module of the package that the session, robot and metrics use (imported eagerly).
_ALL_MODULES = (
    "davisinteractive",
    "davisinteractive.common",
    "davisinteractive.logging",
    *_NUMPY_USERS,
    "davisinteractive.connector.local",
    "davisinteractive.connector.remote",
    "davisinteractive.connector.fabric",
    "davisinteractive.session.session",
    "davisinteractive.session",
    "davisinteractive.metrics",
    "davisinteractive.robot",
    "davisinteractive.dataset",
    "davisinteractive.utils",
)

#: Third-party modules davisinteractive imports; loaded before the temporary NumPy aliases.
_DEPENDENCIES = (
    "pandas",
    "networkx",
    "scipy.ndimage",
    "scipy.special",
    "sklearn.neighbors",
    "skimage.filters",
    "skimage.morphology",
    "cv2",
    "PIL.Image",
    "PIL.ImageDraw",
    "six",
    "absl.flags",
    "absl.logging",
    "requests",
)


#: The removed NumPy scalar aliases davisinteractive uses, with what they always meant.
#: (``np.bool`` is not here: NumPy 2 defines it again, as ``np.bool_``.)
_REMOVED_NUMPY_ALIASES: dict[str, Any] = {"int": int, "float": float}

#: NumPy's C flag ``NPY_ARRAY_OWNDATA`` (exported to Python as ``NPY_OWNDATA`` before NumPy 2).
_NPY_ARRAY_OWNDATA = 0x0004

#: Marker set on every davisinteractive object patched here (idempotence across reloads).
_MARK = "_mivos_compat_patched"


class _ModuleView(types.ModuleType):
    """A module object that forwards attribute look-ups to ``target`` plus a few extras."""

    def __init__(self, target: types.ModuleType, extras: dict[str, Any]):
        super().__init__(target.__name__, getattr(target, "__doc__", None))
        self.__dict__.update(extras)
        self.__dict__[_MARK] = True
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:  # called only when normal look-up fails
        return getattr(object.__getattribute__(self, "_target"), name)

    def __repr__(self) -> str:
        return f"<compat view of {object.__getattribute__(self, '_target')!r}>"


class _LegacyTieBreaker(numpy.random.Generator):
    """A Generator whose ``permutation`` is the pre-0.19 scikit-image tie-breaking order.

    ``skimage.morphology.medial_axis`` calls ``np.random.default_rng(rng).permutation(n)``
    (a ``Generator`` passed as ``rng`` is used as is); old scikit-image used
    ``np.random.RandomState(0).permutation(n)``, recreated on every call.
    """

    def __init__(self):
        super().__init__(numpy.random.MT19937(0))

    def permutation(self, x, axis=0):  # noqa: D401 - same signature as Generator.permutation
        return numpy.random.RandomState(0).permutation(x)


class _MedialAxisTables:
    """Remembers the 3 x 3 patterns and their component counts that scikit-image's
    ``medial_axis`` recomputes on every call.

    ``medial_axis`` rebuilds its two 512-entry look-up tables on each call: 2,048 calls of
    ``_pattern_of`` and 1,024 of ``scipy.ndimage.label`` on 3 x 3 patterns, about 30 ms, which
    the robot pays for every skeleton it draws (most of its time on small frames). For the
    duration of one call (``with tables:``) the module's ``_pattern_of`` and ``ndi.label`` are
    swapped for remembering versions: a pattern is the same read-only array every time, a 3 x 3
    input with the module's 8-connectivity structure gets a copy of its first result, anything
    else goes to ``ndi.label`` itself. Pure functions remembered, so the skeletons are those of
    the plain call (tested); the module's names are restored on exit. Skipped (``None``) on a
    scikit-image whose ``medial_axis`` does not look them up this way.
    """

    def __init__(self, module: types.ModuleType):
        self.module = module
        self.ndi = module.ndi
        self.pattern_of = module._pattern_of
        self.patterns: dict[int, numpy.ndarray] = {}
        self.labels: dict[bytes, tuple[numpy.ndarray, int]] = {}
        self.ndi_view = _ModuleView(self.ndi, {"label": self.label})
        self.lock = threading.Lock()

    @classmethod
    def for_function(cls, function) -> "_MedialAxisTables | None":
        module = sys.modules.get(getattr(function, "__module__", ""), None)
        names: set[str] = set()
        codes = [getattr(function, "__code__", None)]
        while codes:  # the function's code and the comprehensions nested in it
            code = codes.pop()
            if isinstance(code, types.CodeType):
                names.update(code.co_names)
                codes.extend(code.co_consts)
        if module is None or not all(hasattr(module, n) and n in names
                                     for n in ("_pattern_of", "ndi", "_eight_connect")):
            return None
        return cls(module)

    def pattern(self, index: int) -> numpy.ndarray:
        found = self.patterns.get(index)
        if found is None:
            found = self.pattern_of(index)
            found.setflags(write=False)
            self.patterns[index] = found
        return found

    def label(self, input, structure=None, output=None):  # noqa: A002 - ndi.label's names
        if (output is None and structure is self.module._eight_connect
                and isinstance(input, numpy.ndarray) and input.shape == (3, 3)
                and input.dtype == bool):
            key = input.tobytes()
            found = self.labels.get(key)
            if found is None:
                labelled, count = self.ndi.label(input, structure)
                labelled.setflags(write=False)
                found = self.labels[key] = (labelled, count)
            return found[0].copy(), found[1]
        return self.ndi.label(input, structure, output)

    def __enter__(self):
        self.lock.acquire()
        self.module.ndi, self.module._pattern_of = self.ndi_view, self.pattern
        return self

    def __exit__(self, *exc):
        self.module.ndi, self.module._pattern_of = self.ndi, self.pattern_of
        self.lock.release()
        return False


def _seeded_medial_axis(original):
    """``medial_axis`` with the old fixed tie-breaking unless the caller chooses one."""
    try:
        params = inspect.signature(original).parameters
    except (TypeError, ValueError):
        params = {}

    tables = _MedialAxisTables.for_function(original)

    def medial_axis(image, mask=None, return_distance=False, **kwargs):
        if "rng" in params and kwargs.get("rng") is None:
            kwargs["rng"] = _LegacyTieBreaker()
        elif "random_state" in params and kwargs.get("random_state") is None:
            kwargs["random_state"] = 0
        if tables is None:
            return original(image, mask=mask, return_distance=return_distance, **kwargs)
        with tables:
            return original(image, mask=mask, return_distance=return_distance, **kwargs)

    medial_axis.__wrapped__ = original
    medial_axis.__doc__ = original.__doc__
    setattr(medial_axis, _MARK, True)
    return medial_axis


def _numpy_view() -> _ModuleView:
    extras: dict[str, Any] = {}
    for name, value in _REMOVED_NUMPY_ALIASES.items():
        if name not in numpy.__dict__:
            extras[name] = value
    if "trapz" not in numpy.__dict__ and hasattr(numpy, "trapezoid"):
        extras["trapz"] = numpy.trapezoid
    return _ModuleView(numpy, extras)


def _networkx_view() -> _ModuleView:
    # davisinteractive's dependency, imported only when davisinteractive is adapted
    import networkx as nx

    extras = {}
    if not hasattr(nx, "from_scipy_sparse_matrix"):
        extras["from_scipy_sparse_matrix"] = nx.from_scipy_sparse_array
    return _ModuleView(nx, extras)


class _TemporaryNumpyAliases:
    """Add ``numpy.int`` / ``numpy.float`` for the duration of a ``with`` block only."""

    def __enter__(self):
        self._added = []
        for name, value in _REMOVED_NUMPY_ALIASES.items():
            if name not in numpy.__dict__:
                setattr(numpy, name, value)
                self._added.append(name)
        return self

    def __exit__(self, *exc):
        for name in self._added:
            numpy.__dict__.pop(name, None)
        return False


def _import_package() -> None:
    for dep in _DEPENDENCIES:
        importlib.import_module(dep)
    with _TemporaryNumpyAliases():
        for name in _ALL_MODULES:
            importlib.import_module(name)


# ----------------------------------------------------------------------------- pandas patches

_REPORT_NUMERIC = ("scribble_idx", "interaction", "object_id", "frame", "jaccard", "contour",
                   "j_and_f", "timing")


def _numeric_report(df):
    """Copy of a report with its numeric columns converted from ``object`` to numbers."""
    # davisinteractive's dependency, imported only when its report is built
    import pandas as pd

    df = df.copy()
    for col in _REPORT_NUMERIC:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col])
    return df


def _wrap_summarize_report(original):
    def summarize_report(self, df):
        df = _numeric_report(df)
        if "session_id" in df.columns:
            df = df.drop(columns="session_id")
        return original(self, df)

    summarize_report.__wrapped__ = original
    summarize_report.__doc__ = original.__doc__
    setattr(summarize_report, _MARK, True)
    return summarize_report


def _wrap_get_report(original):
    def get_report(self, session_id=None, **kwargs):
        return _numeric_report(original(self, session_id=session_id, **kwargs))

    get_report.__wrapped__ = original
    get_report.__doc__ = original.__doc__
    setattr(get_report, _MARK, True)
    return get_report


# ----------------------------------------------------------------------------- entry points


def _apply_patches() -> None:
    """Install the patches; each one is skipped when already present (idempotent)."""
    np_view = _numpy_view()
    for name in _NUMPY_USERS:
        mod = sys.modules[name]
        current = getattr(mod, "np", None)
        if current is not None and not getattr(current, _MARK, False):
            mod.np = np_view

    rle = sys.modules["davisinteractive.third_party.mask_api._mask"]
    if not getattr(rle.np, _MARK, False):
        rle.np = _ModuleView(numpy, {"NPY_OWNDATA": _NPY_ARRAY_OWNDATA})

    robot_mod = sys.modules["davisinteractive.robot.interactive_robot"]
    if not getattr(robot_mod.nx, _MARK, False):
        robot_mod.nx = _networkx_view()
    if not getattr(robot_mod.medial_axis, _MARK, False):
        robot_mod.medial_axis = _seeded_medial_axis(robot_mod.medial_axis)

    svc = sys.modules["davisinteractive.evaluation.service"].EvaluationService
    if not getattr(svc.summarize_report, _MARK, False):
        svc.summarize_report = _wrap_summarize_report(svc.summarize_report)

    storage = sys.modules["davisinteractive.storage.local"].LocalStorage
    if not getattr(storage.get_report, _MARK, False):
        storage.get_report = _wrap_get_report(storage.get_report)


def is_patched() -> bool:
    """True once :func:`ensure_compat` has completed in this process."""
    return _DONE


def ensure_compat() -> None:
    """Import ``davisinteractive`` and apply the patches listed in the module docstring.

    Idempotent and thread-safe; raises ``ImportError`` when davisinteractive is missing.
    """
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        _import_package()

        _apply_patches()
        _DONE = True
        logger.debug("davisinteractive compatibility patches applied")
