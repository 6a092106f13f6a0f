"""Run fingerprints: what a resumable job's results depend on, to decide whether a rerun may
reuse them.

A fingerprint is a JSON object with two parts:

* ``config``: the job's fully resolved settings (every option that can change a result, with
  defaults filled in), made canonical (sorted keys, tuples as lists, paths as strings);
* ``weights``: for every network, the SHA-256 of its weight file (``{"sha256": ..., "bytes":
  ...}``), or a description of how it was made without one (``"random(seed=0)"``).

A rerun computes its own fingerprint and compares it with the stored one: equal means the
earlier results are reused; different means :class:`FingerprintMismatch`, whose message names
every differing key (e.g. ``config.inference.fusion: 'diff' -> 'none'``,
``weights.propagation: sha256 1f2e... -> 9a0b...``) and the flag that starts over.

Hashes are cached per process by (resolved path, size, mtime), so a job that checks the same
checkpoint several times reads it once. This module is dependency-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from util.errors import InputError
from util.fileio import atomic_save_json

FINGERPRINT_FILE = "fingerprint.json"
VERSION = 1

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class FingerprintMismatch(InputError):
    """A rerun's settings or weights differ from those of the results already in its folder."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (cached by resolved path, size and modification time)."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        raise InputError(f"{p}: file not found", p) from None
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _HASH_CACHE[key] = digest
    return digest


def weights_entry(path: str | os.PathLike | None, *, random_seed: int | None = None) -> Any:
    """The ``weights`` value of one network: the hash of ``path``, or ``random(seed=N)``."""
    if path is None:
        return f"random(seed={random_seed})" if random_seed is not None else None
    p = Path(path)
    return {"sha256": file_sha256(p), "bytes": p.stat().st_size}


def canonical(obj: Any) -> Any:
    """``obj`` as plain JSON data: dict keys as sorted strings, tuples / sets as lists, paths as
    strings, floats that are whole numbers kept as floats (``1.0`` != ``1`` is not an issue
    because the same code always produces the same type)."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(canonical(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return canonical(obj.item())
    return repr(obj)


def make_fingerprint(config: Mapping[str, Any], weights: Mapping[str, Any] | None = None,
                     kind: str = "") -> dict[str, Any]:
    """A fingerprint from a resolved config and the :func:`weights_entry` of each network."""
    return canonical({"version": VERSION, "kind": kind, "config": dict(config),
                      "weights": dict(weights or {})})


def digest(fp: Mapping[str, Any]) -> str:
    """Short stable hash of a fingerprint (16 hex digits of the SHA-256 of its canonical JSON)."""
    text = json.dumps(canonical(fp), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _short(value: Any) -> str:
    if isinstance(value, Mapping) and "sha256" in value:
        return f"sha256 {str(value['sha256'])[:12]}"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the keys whose values differ (``key: old -> new``)."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping) and not (
            "sha256" in stored and "sha256" in current):
        out: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{name}: (absent) -> {_short(current[key])}")
            elif key not in current:
                out.append(f"{name}: {_short(stored[key])} -> (absent)")
            else:
                out.extend(differences(stored[key], current[key], name))
        return out
    if isinstance(stored, Mapping) and isinstance(current, Mapping):  # two weight entries
        return [] if stored.get("sha256") == current.get("sha256") else [
            f"{prefix}: {_short(stored)} -> {_short(current)}"]
    if canonical(stored) != canonical(current):
        return [f"{prefix}: {_short(stored)} -> {_short(current)}"]
    return []


def load_fingerprint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint stored in ``folder`` (``fingerprint.json``), or None."""
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable run fingerprint ({exc})", path) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a run fingerprint", path)
    return data


def save_fingerprint(folder: str | os.PathLike, fp: Mapping[str, Any]) -> Path:
    """Write ``folder/fingerprint.json`` atomically."""
    return atomic_save_json(Path(folder) / FINGERPRINT_FILE, {**canonical(fp), "digest": digest(fp)})


def check_fingerprint(stored: Mapping[str, Any] | None, current: Mapping[str, Any],
                      where: str | os.PathLike, restart_flag: str = "--restart") -> None:
    """Raise :class:`FingerprintMismatch` when ``stored`` exists and differs from ``current``.

    The message (one line) names the folder, the differing keys and ``restart_flag``.
    """
    if stored is None:
        return
    stored = {k: v for k, v in stored.items() if k != "digest"}
    diffs = differences(stored, canonical(current))
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise FingerprintMismatch(
            f"{where} holds results made with other settings or weights ({shown}); use another "
            f"output folder, or {restart_flag} to discard them and start over", where)
