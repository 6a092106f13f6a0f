"""The Qt-free session of the annotation tool.

A :class:`Session` owns one video: the lazy frames, the networks, the
:class:`~inference.inference_core.InferenceCore`, the edits not yet propagated, the undo
history and the action log. The window only turns mouse and keyboard input into calls of this
class and draws what it returns, so everything here can be tested (and replayed) without Qt.

Edits and groups
----------------
Every action on a frame changes that frame's *working* probabilities ((K+1) x H x W at the
working resolution), shown at once through ``core.update_mask_only``; nothing propagates until
:meth:`Session.propagate`, which commits the working probabilities of the current frame with
``core.interact`` (both passes, stopping at interacted frames, fused with the previous round).

Scribbles and clicks accumulate in an open *group*, as in the original tool: each new stroke
re-runs S2M with all strokes of the group on the mask the group started from. ``commit``
closes the group, so the next strokes start from the updated mask. Free-hand strokes apply
directly, one at a time. In local control (a box set with :meth:`Session.set_local_box`)
scribbles and clicks go through :class:`~inference.interact.interactions.LocalControl` and
change only the box; free-hand strokes are clipped to the box; ``finish_local`` leaves it.

Undo restores the state before the last stroke, click, reset or local step of the current
frame (up to ``history`` states per frame). A propagation cannot be undone, but it can be
cancelled while it runs: :meth:`Session.propagate` takes a ``cancelled`` callable that is
polled after every frame, and a cancelled propagation leaves the video as it was before it
(see :mod:`gui.core_state`).

Replay actions
--------------
``{"frame": t, "object": k, "type": "scribble" | "click" | "free" | "local", "positive": bool,
"points": [[x, y], ...], "radius": r, "box": [x0, y0, x1, y1], "inner": "scribble"}`` or
``{"frame": t, "action": "propagate" | "commit" | "undo" | "reset" | "finish_local"}``, with
coordinates in pixels of the original video. ``radius`` (free-hand brush, click disks) is
optional; ``inner`` (``scribble``, ``click`` or ``free``) is the interaction inside the box of
a ``local`` action (default ``scribble``). Every action taken is logged in this format
(:attr:`Session.actions`), so a session file replays.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from gui.core_state import (
    PropagationSnapshot,
    affected_range,
    restore_interacted,
    write_stored_prob,
)
from gui.models import DEFAULT_ARCH, Networks, WeightFiles, build_networks
from gui.render import draw_stroke, stroke_region
from inference.inference_core import InferenceConfig, InferenceCore
from inference.interact.interactions import (
    NO_SCRIBBLE,
    Click,
    ClickInteraction,
    FreeHandInteraction,
    LocalControl,
    ScribbleInteraction,
)
from inference.interact.s2m_controller import S2MController
from util.fileio import atomic_save_json, atomic_write_bytes, ensure_dir
from util.palette import read_mask, write_palette_png
from util.video_io import FrameSource, write_overlay_frames, write_overlay_video

log = logging.getLogger(__name__)

STROKE_TYPES = ("scribble", "click", "free", "local")
FRAME_ACTIONS = ("propagate", "commit", "undo", "reset", "finish_local")
SESSION_FILE = "session.json"
SESSION_VERSION = 1
SCRIBBLE_RADIUS = 1  # 3-px strokes, as in the original tool


class PropagationCancelled(Exception):
    """Raised from the core's progress callback when the user cancels a propagation."""


class ActionError(ValueError):
    """An action that cannot be applied (the message says why)."""


@dataclass
class SessionSettings:
    """Everything that defines a session besides the video and the user's actions."""

    arch: str = DEFAULT_ARCH
    preset: str = "mivos"
    s2m_model: str | None = None
    prop_model: str | None = None
    fusion_model: str | None = None
    random_weights: bool = False
    seed: int = 0
    device: str = "cpu"
    resolution: int = 480  # shorter side of the working frames (-1: original size)
    num_objects: int = 1
    top_k: int | None = 50
    mem_every: int = 5
    fusion: str = "diff"
    prob_dtype: str = "float32"
    result_storage: str = "memory"  # "disk": per-frame results in a temporary file
    image_cache: int = 64
    feature_cache_mb: float = 1024.0
    memory_budget: int | None = None
    amp: str | None = None  # util.amp; the core runs float32 where the CPU would emulate it
    frame_cache: int = 64  # decoded frames kept by the lazy reader
    click_radius: int = 5  # disk radius of a click (working pixels)
    brush_radius: int = 3  # default free-hand brush radius (working pixels)
    local_size: int = 480  # S2M working size of a local-control crop (shorter side)
    history: int = 50  # undo states per frame

    def inference_config(self) -> InferenceConfig:
        """The core's options: the architecture's defaults (e.g. no temporary memory for
        stcn) with the session's settings."""
        return InferenceConfig.for_arch(
            self.arch, top_k=self.top_k, mem_every=self.mem_every, fusion=self.fusion,
            prob_dtype=self.prob_dtype, result_storage=self.result_storage,
            image_cache=self.image_cache,
            feature_cache_mb=self.feature_cache_mb, memory_budget=self.memory_budget,
            amp=self.amp)

    def weights(self) -> WeightFiles:
        return WeightFiles(self.s2m_model, self.prop_model, self.fusion_model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Group:
    """An open scribble or click interaction: all its strokes are re-segmented together."""

    kind: str  # scribble | click
    base: torch.Tensor  # (K+1) x H x W probabilities when the group started
    labels: np.ndarray | None = None  # scribbles: H x W int32, -1 none, 0 background, k object
    clicks: list[Click] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None  # local control: (top, left, bottom, right)

    def copy(self) -> Group:
        return Group(self.kind, self.base, None if self.labels is None else self.labels.copy(),
                     list(self.clicks), self.box)


@dataclass
class FrameEdit:
    """Working state of a frame with edits that are not propagated yet."""

    prob: torch.Tensor  # (K+1) x H x W float32 (CPU)
    history: list[tuple[torch.Tensor, Group | None]] = field(default_factory=list)
    group: Group | None = None


@dataclass
class ActionResult:
    """What one action did: a console message and the time the computation took."""

    message: str
    compute_s: float = 0.0
    frames_changed: tuple[int, int] | None = None  # inclusive range, for propagation


def _grow(prob: torch.Tensor, k: int) -> torch.Tensor:
    """Pad (K'+1) x H x W probabilities with empty object channels up to K+1."""
    extra = k + 1 - prob.shape[0]
    if extra <= 0:
        return prob
    return torch.cat([prob, prob.new_zeros(extra, *prob.shape[1:])], dim=0)


class Session:
    """One video being annotated (see the module docstring).

    Args:
        frames: the working frames (a lazy :class:`FrameSource` at the working resolution).
        nets: the networks.
        settings: the session settings.
        original_size: (H, W) of the video as stored (saved masks have this size); default the
            frames' own size.
        source: the path of the video (recorded in session files).
    """

    def __init__(self, frames: FrameSource | Sequence[np.ndarray], nets: Networks,
                 settings: SessionSettings, original_size: tuple[int, int] | None = None,
                 source: str | None = None):
        self.frames = frames
        self.nets = nets
        self.settings = settings
        self.source = source
        self.core = InferenceCore(nets.propagation, nets.fusion, frames, settings.num_objects,
                                  config=settings.inference_config(), device=nets.device,
                                  storage_device="cpu")
        self.s2m = S2MController(nets.s2m, device=nets.device)
        self.height, self.width = self.core.height, self.core.width
        self.original_size = tuple(original_size) if original_size else (self.height, self.width)
        self.names = list(getattr(frames, "names", [f"{t:05d}" for t in range(len(frames))]))
        self.frame = 0
        self.object = 1
        self.edits: dict[int, FrameEdit] = {}
        self.local_box: tuple[int, int, int, int] | None = None
        self.actions: list[dict[str, Any]] = []
        self.user_time = 0.0
        self.compute_time = 0.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, source: str | Path, settings: SessionSettings, nets: Networks | None = None
             ) -> Session:
        """Open a frame folder or a video file with ``settings`` (networks built if not given)."""
        frames = FrameSource(source, resolution=settings.resolution,
                             cache_size=settings.frame_cache)
        if nets is None:
            nets = build_networks(settings.arch, settings.preset, settings.weights(),
                                  settings.random_weights, settings.device,
                                  with_fusion=settings.fusion == "diff", seed=settings.seed)
        return cls(frames, nets, settings, original_size=frames.original_size,
                   source=str(Path(source).resolve()))

    # ------------------------------------------------------------------ basic state
    @property
    def num_frames(self) -> int:
        return self.core.num_frames

    @property
    def num_objects(self) -> int:
        return self.core.k

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): original pixels per working pixel."""
        return self.original_size[1] / self.width, self.original_size[0] / self.height

    def image(self, t: int | None = None) -> np.ndarray:
        """H x W x 3 RGB uint8 working frame t (default: the current frame)."""
        return np.asarray(self.frames[self.frame if t is None else t])

    def image_tensor(self, t: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.frames[t], copy=True)).permute(2, 0, 1).float() / 255

    def mask(self, t: int | None = None) -> np.ndarray:
        """H x W uint8 label map shown for frame t (working edits included)."""
        return self.core.get_mask(self.frame if t is None else t)

    def prob(self, t: int) -> torch.Tensor:
        """(K+1) x H x W working probabilities of frame t (float32, CPU)."""
        edit = self.edits.get(t)
        if edit is not None:
            return edit.prob
        return self.core.get_prob(t).float()

    def pending_frames(self) -> list[int]:
        """Frames with edits that are not propagated."""
        return sorted(self.edits)

    def open_group(self) -> Group | None:
        edit = self.edits.get(self.frame)
        return None if edit is None else edit.group

    def can_undo(self) -> bool:
        edit = self.edits.get(self.frame)
        return edit is not None and bool(edit.history)

    # ------------------------------------------------------------------ navigation / objects
    def goto(self, t: int) -> None:
        if not 0 <= t < self.num_frames:
            raise ActionError(f"frame {t} out of range: the video has {self.num_frames} frames")
        if t != self.frame:
            self.finish_local(log_action=False)
            self._close_group()
        self.frame = t

    def add_object(self) -> int:
        """Add one (empty) object at any frame; returns its id."""
        k = self.core.add_objects(1)
        for edit in self.edits.values():
            edit.prob = _grow(edit.prob, k)
            edit.history = [(_grow(p, k), g) for p, g in edit.history]
            for g in [edit.group] + [g for _, g in edit.history]:
                if g is not None:
                    g.base = _grow(g.base, k)
        self.settings.num_objects = k
        return k

    def select_object(self, k: int) -> None:
        """Select object k, adding objects up to k when k is new."""
        if k < 1 or k > 255:
            raise ActionError(f"object ids are 1..255, got {k}")
        while self.num_objects < k:
            self.add_object()
        self.object = k

    # ------------------------------------------------------------------ edits
    def _edit(self) -> FrameEdit:
        edit = self.edits.get(self.frame)
        if edit is None:
            edit = FrameEdit(self.core.get_prob(self.frame).float().clone())
            self.edits[self.frame] = edit
        return edit

    def _show(self, t: int) -> None:
        self.core.update_mask_only(self.prob(t), t)

    def _close_group(self) -> None:
        edit = self.edits.get(self.frame)
        if edit is not None:
            edit.group = None

    def _next_group(self, edit: FrameEdit, kind: str) -> Group:
        """A copy of the open group of this kind (and box) to extend, or a new group."""
        g = edit.group
        if g is not None and g.kind == kind and g.box == self.local_box:
            return g.copy()
        g = Group(kind, edit.prob, box=self.local_box)
        if kind == "scribble":
            g.labels = np.full((self.height, self.width), NO_SCRIBBLE, np.int32)
        return g

    def _check_points(self, points: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
        if len(points) == 0:
            raise ActionError("a stroke needs at least one point")
        pts = [(int(round(float(x))), int(round(float(y)))) for x, y in points]
        for x, y in pts:
            if not (0 <= x < self.width and 0 <= y < self.height):
                raise ActionError(f"point ({x}, {y}) is outside the {self.width}x{self.height} frame")
        return pts

    def _commit_step(self, compute: Callable[[FrameEdit, Group | None], torch.Tensor],
                     group: Callable[[FrameEdit], Group | None]) -> float:
        """Run one edit step on the current frame: ``group(edit)`` gives the group after the
        step, ``compute(edit, group)`` the new probabilities. The step is pushed on the undo history
        only when it succeeds. Returns the compute time."""
        created = self.frame not in self.edits
        edit = self._edit()
        try:
            g = group(edit)
            start = time.perf_counter()
            new = compute(edit, g)
            dt = time.perf_counter() - start
        except ValueError as exc:
            if created:
                del self.edits[self.frame]
            raise ActionError(str(exc)) from exc
        edit.history.append((edit.prob, edit.group))
        if len(edit.history) > self.settings.history:
            del edit.history[0]
        edit.group = g
        edit.prob = new.float()
        self._show(self.frame)
        return dt

    def scribble(self, points: Sequence[Sequence[float]], positive: bool = True) -> ActionResult:
        """A scribble stroke (working pixels) for the current object, or for the background
        when negative; S2M re-runs with every stroke of the open group."""
        pts = self._check_points(points)
        value = self.object if positive else 0

        def group(edit: FrameEdit) -> Group:
            g = self._next_group(edit, "scribble")
            draw_stroke(g.labels, pts, value, SCRIBBLE_RADIUS)
            return g

        def compute(edit: FrameEdit, g: Group) -> torch.Tensor:
            inner = ScribbleInteraction(torch.from_numpy(g.labels.copy()), self.s2m, dilate=False)
            return self._apply(inner, g)

        dt = self._commit_step(compute, group)
        self._log("scribble", pts, positive)
        return ActionResult(f"scribble {'+' if positive else '-'} object {self.object} on frame "
                            f"{self.frame}", dt)

    def click(self, x: float, y: float, positive: bool = True, radius: float | None = None
              ) -> ActionResult:
        """A positive (current object) or negative click; S2M with every click of the group."""
        (xi, yi), = self._check_points([(x, y)])
        r = self.settings.click_radius if radius is None else max(int(round(radius)), 1)

        def group(edit: FrameEdit) -> Group:
            g = self._next_group(edit, "click")
            g.clicks.append(Click(yi, xi, self.object, positive))
            return g

        def compute(edit: FrameEdit, g: Group) -> torch.Tensor:
            return self._apply(ClickInteraction(list(g.clicks), self.s2m, radius=r), g)

        dt = self._commit_step(compute, group)
        self._log("click", [(xi, yi)], positive, radius=radius)
        return ActionResult(f"click {'+' if positive else '-'} object {self.object} at ({xi}, {yi}) "
                            f"on frame {self.frame}", dt)

    def free(self, points: Sequence[Sequence[float]], radius: float | None = None,
             positive: bool = True) -> ActionResult:
        """Free-hand brush stroke: paint the current object (exact), or erase it (negative)."""
        pts = self._check_points(points)
        r = self.settings.brush_radius if radius is None else float(radius)
        region = stroke_region((self.height, self.width), pts, r)
        if self.local_box is not None:
            top, left, bottom, right = self.local_box
            inside = np.zeros_like(region)
            inside[top:bottom + 1, left:right + 1] = True
            region &= inside
        if not region.any():
            raise ActionError("the brush stroke covers no pixel (outside the local box?)")
        inter = FreeHandInteraction(torch.from_numpy(region), self.object, erase=not positive)
        dt = self._commit_step(lambda edit, g: inter.apply(self.image_tensor(self.frame), edit.prob),
                               lambda edit: None)
        self._log("free", pts, positive, radius=r)
        return ActionResult(f"free-hand {'paint' if positive else 'erase'} object {self.object} "
                            f"(radius {r:g}) on frame {self.frame}", dt)

    def _apply(self, inner, g: Group) -> torch.Tensor:
        image = self.image_tensor(self.frame)
        if g.box is not None:
            return LocalControl(g.box, inner, work_size=self.settings.local_size).apply(image, g.base)
        return inner.apply(image, g.base)

    def set_local_box(self, x0: float, y0: float, x1: float, y1: float) -> ActionResult:
        """Enter local control on the box with corners (x0, y0), (x1, y1) (working pixels,
        inclusive, any order); the open group is closed."""
        (xa, ya), (xb, yb) = self._check_points([(x0, y0), (x1, y1)])
        top, bottom = sorted((ya, yb))
        left, right = sorted((xa, xb))
        if bottom - top < 1 or right - left < 1:
            raise ActionError("the local-control box must be at least 2x2 pixels")
        self._close_group()
        self.local_box = (top, left, bottom, right)
        return ActionResult(f"local control on frame {self.frame}: box x {left}..{right}, "
                            f"y {top}..{bottom}")

    def finish_local(self, log_action: bool = True) -> ActionResult:
        """Leave local control (the result stays as it is)."""
        if self.local_box is None:
            return ActionResult("not in local control")
        self.local_box = None
        self._close_group()
        if log_action:
            self.actions.append({"frame": self.frame, "action": "finish_local"})
        return ActionResult(f"local control finished on frame {self.frame}")

    def commit(self) -> ActionResult:
        """Close the open scribble / click group: the next strokes start from this mask."""
        self._close_group()
        self.actions.append({"frame": self.frame, "action": "commit"})
        return ActionResult(f"interaction committed on frame {self.frame}")

    def reset_frame(self) -> ActionResult:
        """Clear the mask of the current frame (undoable; the stored probabilities are kept, so
        the next propagation still measures its difference against the previous round)."""

        def empty(edit: FrameEdit, g: Group | None) -> torch.Tensor:
            out = torch.zeros_like(edit.prob)
            out[0] = 1
            return out

        self._commit_step(empty, lambda edit: None)
        self.actions.append({"frame": self.frame, "action": "reset"})
        return ActionResult(f"frame {self.frame} reset")

    def undo(self) -> ActionResult:
        """Undo the last stroke, click, brush stroke or reset on the current frame."""
        edit = self.edits.get(self.frame)
        if edit is None or not edit.history:
            return ActionResult(f"nothing to undo on frame {self.frame}")
        edit.prob, group = edit.history.pop()
        edit.group = group
        if not edit.history:
            del self.edits[self.frame]
        self._show(self.frame)
        self.actions.append({"frame": self.frame, "action": "undo"})
        return ActionResult(f"undo on frame {self.frame}")

    # ------------------------------------------------------------------ propagation
    def propagate(self, progress: Callable[[int, int], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> ActionResult:
        """Commit the current frame and propagate both ways (see the module docstring).

        progress(done, total) is called after every frame; when cancelled() turns true the
        propagation stops and the video is put back as it was (PropagationCancelled is raised).
        """
        t = self.frame
        self.finish_local(log_action=False)
        self._close_group()
        prob = self.prob(t)
        snapshot = PropagationSnapshot.take(self.core, t)

        def report(done: int, total: int) -> None:
            if cancelled is not None and cancelled():
                raise PropagationCancelled
            if progress is not None:
                progress(done, total)

        if cancelled is not None and cancelled():
            raise PropagationCancelled
        start = time.perf_counter()
        try:
            self.core.interact(prob, t, progress=report)
        except BaseException:
            snapshot.restore(self.core)
            for f in self.edits:  # edits stay; their display is put back too
                self._show(f)
            raise
        dt = time.perf_counter() - start
        lo, hi = snapshot.lo, snapshot.hi
        dropped = [f for f in self.edits if lo <= f <= hi and f != t]
        self.edits.pop(t, None)
        for f in dropped:
            del self.edits[f]
        self.actions.append({"frame": t, "action": "propagate"})
        msg = f"propagated from frame {t} over frames {lo}..{hi}"
        if dropped:
            msg += f" (replaced unpropagated edits on frames {dropped})"
        return ActionResult(msg, dt, (lo, hi))

    def propagation_range(self) -> tuple[int, int]:
        """Frames a propagation from the current frame would write (inclusive)."""
        return affected_range(self.core, self.frame)

    # ------------------------------------------------------------------ log and replay
    def _to_original(self, pts: Sequence[tuple[int, int]]) -> list[list[float]]:
        sx, sy = self.scale
        return [[x * sx, y * sy] for x, y in pts]

    def _log(self, kind: str, pts: Sequence[tuple[int, int]], positive: bool,
             radius: float | None = None) -> None:
        entry: dict[str, Any] = {"frame": self.frame, "object": self.object}
        if self.local_box is not None:
            top, left, bottom, right = self.local_box
            (x0, y0), (x1, y1) = self._to_original([(left, top), (right, bottom)])
            entry.update(type="local", inner=kind, box=[x0, y0, x1, y1])
        else:
            entry["type"] = kind
        entry["positive"] = bool(positive)
        entry["points"] = self._to_original(pts)
        if radius is not None:
            entry["radius"] = float(radius) * self.scale[0]
        self.actions.append(entry)

    def _from_original(self, points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
        sx, sy = self.scale
        out = []
        for p in points:
            if len(p) != 2:
                raise ActionError(f"a point is [x, y], got {p!r}")
            out.append((min(float(p[0]) / sx, self.width - 1), min(float(p[1]) / sy, self.height - 1)))
        return out

    def apply_action(self, action: dict[str, Any],
                     progress: Callable[[int, int], None] | None = None,
                     cancelled: Callable[[], bool] | None = None) -> ActionResult:
        """Apply one replay action (format in the module docstring)."""
        if not isinstance(action, dict) or "frame" not in action:
            raise ActionError(f"an action is an object with a 'frame', got {action!r}")
        self.goto(int(action["frame"]))
        if "action" in action:
            name = action["action"]
            if name == "propagate":
                return self.propagate(progress, cancelled)
            if name == "commit":
                return self.commit()
            if name == "undo":
                return self.undo()
            if name == "reset":
                return self.reset_frame()
            if name == "finish_local":
                return self.finish_local()
            raise ActionError(f"unknown action {name!r}; expected one of {', '.join(FRAME_ACTIONS)}")
        kind = action.get("type")
        if kind not in STROKE_TYPES:
            raise ActionError(f"unknown type {kind!r}; expected one of {', '.join(STROKE_TYPES)}")
        self.select_object(int(action.get("object", self.object)))
        positive = bool(action.get("positive", True))
        points = self._from_original(action.get("points", []))
        radius = action.get("radius")
        radius = None if radius is None else float(radius) / self.scale[0]
        if kind == "local":
            box = action.get("box")
            if box is None or len(box) != 4:
                raise ActionError("a local action needs a box [x0, y0, x1, y1]")
            (x0, y0), (x1, y1) = self._from_original([box[:2], box[2:]])
            (xa, ya), (xb, yb) = self._check_points([(x0, y0), (x1, y1)])
            wanted = (min(ya, yb), min(xa, xb), max(ya, yb), max(xa, xb))
            if self.local_box != wanted:
                self.set_local_box(x0, y0, x1, y1)
            kind = action.get("inner", "scribble")
            if kind not in ("scribble", "click", "free"):
                raise ActionError(f"unknown inner interaction {kind!r} of a local action")
        elif self.local_box is not None:
            self.finish_local()
        if kind == "scribble":
            return self.scribble(points, positive)
        if kind == "free":
            return self.free(points, radius, positive)
        results = [self.click(x, y, positive, radius) for x, y in points]
        if not results:
            raise ActionError("a click action needs at least one point")
        return ActionResult("; ".join(r.message for r in results), sum(r.compute_s for r in results))

    def record_time(self, user_s: float, compute_s: float) -> None:
        self.user_time += max(user_s, 0.0)
        self.compute_time += max(compute_s, 0.0)

    def timing_line(self, result: ActionResult, user_s: float) -> str:
        """Console line of one action: what it did, user time and compute time, and totals."""
        return (f"{result.message} | user {user_s:.2f} s, compute {result.compute_s:.2f} s | "
                f"total user {self.user_time:.1f} s, compute {self.compute_time:.1f} s")

    # ------------------------------------------------------------------ masks in and out
    def original_mask(self, t: int) -> np.ndarray:
        """Label map of frame t at the video's original resolution (nearest neighbour)."""
        m = self.mask(t)
        h, w = self.original_size
        if m.shape == (h, w):
            return m.copy()
        return cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)

    def _original_frames(self) -> Sequence[np.ndarray]:
        if isinstance(self.frames, FrameSource):
            if self.frames.size == self.frames.original_size:
                return self.frames
            return FrameSource(self.frames.path, resolution=-1, cache_size=2)
        return self.frames

    def save(self, out_dir: str | Path, overlays: bool = True, video: bool = True,
             progress: Callable[[int, int], None] | None = None) -> ActionResult:
        """Write ``masks/`` (palette PNGs at the original resolution, one per frame),
        ``overlay/`` (PNG overlays) and ``overlay.mp4`` under ``out_dir``."""
        start = time.perf_counter()
        out = ensure_dir(out_dir)
        n = self.num_frames
        total = n * (1 + int(overlays) + int(video))
        report = progress or (lambda done, total: None)
        for t in range(n):
            write_palette_png(out / "masks" / f"{self.names[t]}.png", self.original_mask(t))
            report(t + 1, total)
        masks = _LazyMasks(self)
        frames = self._original_frames()
        if overlays:
            write_overlay_frames(out / "overlay", _ProgressFrames(frames, report, n, total), masks,
                                 names=self.names)
        if video:
            fps = getattr(self.frames, "fps", 0.0) or 25.0
            write_overlay_video(out / "overlay.mp4",
                                _ProgressFrames(frames, report, n * (1 + int(overlays)), total),
                                masks, fps=fps)
        return ActionResult(f"saved {n} masks{', overlays' if overlays else ''}"
                            f"{' and an overlay video' if video else ''} to {out}",
                            time.perf_counter() - start)

    def load_masks(self, folder: str | Path) -> ActionResult:
        """Load label maps ``<frame name>.png`` from ``folder`` (any resolution; resized with
        nearest neighbour) as the current result of their frames. Objects are added for labels
        above K. Frames without a file keep their result."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"mask folder not found: {folder}")
        found = [(t, folder / f"{name}.png") for t, name in enumerate(self.names)]
        found = [(t, p) for t, p in found if p.is_file()]
        if not found:
            raise ActionError(f"{folder}: no mask named after the frames ({self.names[0]}.png, ...)")
        start = time.perf_counter()
        for t, path in found:
            labels = read_mask(path)
            if labels.shape != (self.height, self.width):
                labels = cv2.resize(labels, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
            top = int(labels.max())
            while self.num_objects < top:
                self.add_object()
            write_stored_prob(self.core, t, torch.from_numpy(labels.astype(np.int64)))
            self.edits.pop(t, None)
        return ActionResult(f"loaded {len(found)} masks from {folder} ({self.num_objects} objects)",
                            time.perf_counter() - start)

    # ------------------------------------------------------------------ session files
    def settings_dict(self) -> dict[str, Any]:
        d = asdict(self.settings)
        d["num_objects"] = self.num_objects
        return d

    def save_session(self, folder: str | Path) -> ActionResult:
        """Write a session folder that :meth:`load_session` reopens where it stopped:
        ``session.json`` (settings, actions, interacted frames, position, times), ``state/``
        (every frame's stored probabilities, uint8, and the label map shown), ``pending/``
        (the probabilities of unpropagated edits) and ``masks/``
        (the palette masks at the original resolution)."""
        start = time.perf_counter()
        out = ensure_dir(folder)
        n = self.num_frames
        for t in range(n):
            _save_prob(out / "state" / f"{t:05d}.npz", self.core.get_prob(t), self.mask(t))
            write_palette_png(out / "masks" / f"{self.names[t]}.png", self.original_mask(t))
        pending_dir = out / "pending"
        if pending_dir.is_dir():
            for old in pending_dir.glob("*.npz"):
                old.unlink()
        for t, edit in self.edits.items():
            _save_prob(pending_dir / f"{t:05d}.npz", edit.prob)
        meta = {
            "version": SESSION_VERSION,
            "source": self.source,
            "num_frames": n,
            "working_size": [self.height, self.width],
            "original_size": list(self.original_size),
            "settings": self.settings_dict(),
            "frame": self.frame,
            "object": self.object,
            "interacted": list(self.core.interacted),
            "pending": sorted(self.edits),
            "time": {"user_s": self.user_time, "compute_s": self.compute_time},
            "actions": self.actions,
        }
        atomic_save_json(out / SESSION_FILE, meta)
        return ActionResult(f"session saved to {out} ({len(self.actions)} actions)",
                            time.perf_counter() - start)

    @staticmethod
    def read_session_file(folder: str | Path) -> dict[str, Any]:
        path = Path(folder) / SESSION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {SESSION_FILE} in {folder}")
        meta = json.loads(path.read_text())
        if meta.get("version") != SESSION_VERSION:
            raise ActionError(f"{path}: session version {meta.get('version')} is not "
                              f"{SESSION_VERSION}")
        return meta

    def load_session(self, folder: str | Path) -> ActionResult:
        """Restore a folder written by :meth:`save_session` into this (fresh) session: results,
        interacted frames and their memory, unpropagated edits, position, log and times."""
        start = time.perf_counter()
        folder = Path(folder)
        meta = self.read_session_file(folder)
        if meta["num_frames"] != self.num_frames or tuple(meta["working_size"]) != (self.height, self.width):
            raise ActionError(
                f"{folder}: the session has {meta['num_frames']} frames of {meta['working_size']}, "
                f"this video {self.num_frames} of {[self.height, self.width]} (same video and "
                "--resolution?)")
        k = int(meta["settings"]["num_objects"])
        while self.num_objects < k:
            self.add_object()
        for t in range(self.num_frames):
            write_stored_prob(self.core, t, *_load_prob(folder / "state" / f"{t:05d}.npz", k))
        restore_interacted(self.core, [int(i) for i in meta["interacted"]])
        self.edits.clear()
        for t in meta.get("pending", []):
            p, _ = _load_prob(folder / "pending" / f"{int(t):05d}.npz", k)
            self.edits[int(t)] = FrameEdit(p, history=[(self.core.get_prob(int(t)).float(), None)])
        self.frame = int(meta.get("frame", 0))
        self.object = int(meta.get("object", 1))
        self.actions = list(meta.get("actions", []))
        times = meta.get("time", {})
        self.user_time = float(times.get("user_s", 0.0))
        self.compute_time = float(times.get("compute_s", 0.0))
        return ActionResult(f"session reopened from {folder}: {len(self.actions)} actions, "
                            f"{len(self.core.interacted)} interacted frames",
                            time.perf_counter() - start)


class _LazyMasks:
    """Original-resolution label maps of a session, produced on access (bounded memory)."""

    def __init__(self, session: Session):
        self.session = session

    def __len__(self) -> int:
        return self.session.num_frames

    def __getitem__(self, t: int) -> np.ndarray:
        return self.session.original_mask(t)


class _ProgressFrames(Sequence):
    """A frame sequence that reports ``progress(offset + t + 1, total)`` as frame t is read."""

    def __init__(self, frames: Sequence[np.ndarray], progress: Callable[[int, int], None],
                 offset: int, total: int):
        self.frames, self.progress, self.offset, self.total = frames, progress, offset, total

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> np.ndarray:
        frame = self.frames[t]
        self.progress(self.offset + t + 1, self.total)
        return frame


def _save_prob(path: Path, prob: torch.Tensor, labels: np.ndarray | None = None) -> None:
    """(K+1) x H x W probabilities quantised to uint8, and optionally the label map shown."""
    arrays = {"prob": (prob.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_prob(path: Path, k: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """What :func:`_save_prob` wrote: probabilities grown to K+1 channels, and the label map."""
    with np.load(path) as data:
        q = data["prob"]
        labels = data["labels"] if "labels" in data.files else None
    return _grow(torch.from_numpy(q.astype(np.float32) / 255), k), labels


def load_actions(path: str | Path) -> list[dict[str, Any]]:
    """Actions of a replay file: a JSON list of actions, or an object with an ``actions`` list
    (a ``session.json``)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("actions")
    if not isinstance(data, list):
        raise ActionError(f"{path}: expected a list of actions or an object with 'actions'")
    return data
