"""The PySide6 window of the annotation tool.

The window turns input into calls of :class:`gui.controller.Session` and draws what the session
holds; every call that runs a network goes through :class:`gui.worker.JobRunner` on the worker
thread, and the inputs are disabled until it returns (Cancel stays enabled).

Mouse (on the frame):

* Click mode: left click = positive click for the current object, right click = negative;
* Scribble mode: left drag = positive scribble, right drag = background scribble;
* Free-hand mode: left drag paints the current object with the brush, right drag erases it;
  the mouse wheel changes the brush size;
* Ctrl + left drag: select a local-control box; the interactions then act inside the box until
  "Finish local";
* Ctrl + wheel: zoom.

Keys: 1..9 select an object, Left / Right move one frame, Space plays, Ctrl+Z undoes,
Ctrl+Enter propagates, Escape cancels a running propagation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QKeySequence, QPainter, QPen, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from gui.controller import ActionError, ActionResult, PropagationCancelled, Session
from gui.render import (
    OVERLAY_MODES,
    draw_box,
    draw_clicks,
    draw_scribbles,
    object_colour,
    render_mask,
)
from gui.worker import JobRunner

log = logging.getLogger(__name__)

MODES = ("click", "scribble", "free")
ZOOM_MIN, ZOOM_MAX = 0.25, 8.0
PLAY_INTERVAL_MS = 40  # 25 fps


def to_qimage(rgb: np.ndarray) -> QImage:
    """H x W x 3 uint8 RGB -> QImage (owning a copy of the data)."""
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class Canvas(QWidget):
    """Shows the current view at a zoom factor and turns mouse input into image coordinates."""

    stroke_done = Signal(list, bool)  # points [(x, y)] in image pixels, positive
    box_done = Signal(float, float, float, float)  # x0, y0, x1, y1
    wheel_brush = Signal(int)
    wheel_zoom = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.image = QImage()
        self.zoom = 1.0
        self.brush_radius = 3.0
        self.show_brush = False
        self._points: list[tuple[float, float]] = []
        self._positive = True
        self._box_mode = False
        self._hover: QPointF | None = None
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    def set_image(self, image: QImage) -> None:
        self.image = image
        self._fit()
        self.update()

    def set_zoom(self, zoom: float) -> None:
        self.zoom = min(max(zoom, ZOOM_MIN), ZOOM_MAX)
        self._fit()
        self.update()

    def _fit(self) -> None:
        self.setFixedSize(QSize(max(int(self.image.width() * self.zoom), 1),
                                max(int(self.image.height() * self.zoom), 1)))

    def to_image(self, pos: QPointF) -> tuple[float, float]:
        x = min(max(pos.x() / self.zoom, 0.0), self.image.width() - 1)
        y = min(max(pos.y() / self.zoom, 0.0), self.image.height() - 1)
        return x, y

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        target = QRect(0, 0, self.width(), self.height())
        p.drawImage(target, self.image)
        z = self.zoom
        if self._points:
            if self._box_mode:
                (x0, y0), (x1, y1) = self._points[0], self._points[-1]
                p.setPen(QPen(QColor(255, 220, 0), 1, Qt.PenStyle.DashLine))
                p.drawRect(QRect(QPoint(int(x0 * z), int(y0 * z)), QPoint(int(x1 * z), int(y1 * z))))
            else:
                colour = QColor(255, 255, 255) if not self._positive else QColor(255, 80, 80)
                width = max(2 * self.brush_radius * z, 2.0) if self.show_brush else max(3 * z, 1.0)
                pen = QPen(colour, width)
                pen.setCapStyle(Qt.PenCapStyle.RoundCap)
                p.setPen(pen)
                pts = [QPointF(x * z, y * z) for x, y in self._points]
                for a, b in zip(pts[:-1], pts[1:], strict=True):
                    p.drawLine(a, b)
        if self.show_brush and self._hover is not None:
            p.setPen(QPen(QColor(255, 255, 255), 1))
            r = self.brush_radius * z
            p.drawEllipse(self._hover, r, r)
        p.end()

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802
        if not self.isEnabled() or event.button() not in (Qt.MouseButton.LeftButton,
                                                          Qt.MouseButton.RightButton):
            return
        self._box_mode = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier) \
            and event.button() == Qt.MouseButton.LeftButton
        self._positive = event.button() == Qt.MouseButton.LeftButton
        self._points = [self.to_image(event.position())]
        self.update()

    def mouseMoveEvent(self, event: Any) -> None:  # noqa: N802
        self._hover = event.position()
        if self._points:
            pt = self.to_image(event.position())
            if self._box_mode and len(self._points) > 1:
                self._points[-1] = pt
            else:
                self._points.append(pt)
        self.update()

    def mouseReleaseEvent(self, event: Any) -> None:  # noqa: N802
        if not self._points:
            return
        self._points.append(self.to_image(event.position()))
        points, self._points = self._points, []
        if self._box_mode:
            (x0, y0), (x1, y1) = points[0], points[-1]
            self.box_done.emit(x0, y0, x1, y1)
        else:
            self.stroke_done.emit(points, self._positive)
        self.update()

    def wheelEvent(self, event: Any) -> None:  # noqa: N802
        steps = 1 if event.angleDelta().y() > 0 else -1
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.wheel_zoom.emit(steps)
        else:
            self.wheel_brush.emit(steps)
        event.accept()


class MainWindow(QMainWindow):
    """The annotation window of one :class:`Session`."""

    def __init__(self, session: Session, overlay_mode: str = "davis", zoom: float | None = None):
        super().__init__()
        self.session = session
        self.runner = JobRunner(self)
        self.overlay_mode = overlay_mode
        self.mode = "click"
        self._idle_since = time.perf_counter()
        self._last_error: BaseException | None = None
        self.setWindowTitle(f"MiVOS annotation - {session.source or 'video'}")

        self.canvas = Canvas()
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.canvas)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.scroll.setMinimumSize(320, 240)

        # timeline
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, session.num_frames - 1)
        self.slider.valueChanged.connect(self.goto)
        self.frame_label = QLabel()
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._toggle_play)
        self.play_timer = QTimer(self)
        self.play_timer.setInterval(PLAY_INTERVAL_MS)
        self.play_timer.timeout.connect(self._play_step)
        timeline = QHBoxLayout()
        timeline.addWidget(self.play_button)
        timeline.addWidget(self.slider, 1)
        timeline.addWidget(self.frame_label)

        # progress + console
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self._on_progress(0, 0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        self.console = QPlainTextEdit()
        self.console.setReadOnly(True)
        self.console.setMaximumBlockCount(500)
        self.console.setFixedHeight(96)

        left = QVBoxLayout()
        left.addWidget(self.scroll, 1)
        left.addLayout(timeline)
        left.addLayout(progress_row)
        left.addWidget(self.console)

        right = QVBoxLayout()
        right.addWidget(self._interaction_box())
        right.addWidget(self._objects_box(), 1)
        right.addWidget(self._actions_box())
        right.addWidget(self._view_box())
        right.addWidget(self._files_box())
        panel = QWidget()
        panel.setLayout(right)
        panel.setFixedWidth(230)

        root = QHBoxLayout()
        root.addLayout(left, 1)
        root.addWidget(panel)
        central = QWidget()
        central.setLayout(root)
        self.setCentralWidget(central)

        self.canvas.stroke_done.connect(self._on_stroke)
        self.canvas.box_done.connect(self._on_box)
        self.canvas.wheel_brush.connect(lambda s: self.brush_slider.setValue(self.brush_slider.value() + s))
        self.canvas.wheel_zoom.connect(lambda s: self.set_zoom(self.canvas.zoom * (1.25 if s > 0 else 0.8)))
        self.runner.progress.connect(self._on_progress)
        self.runner.busy_changed.connect(self._on_busy)
        self._shortcuts()

        if zoom is None:
            zoom = max(1.0, min(4.0, 640 / max(session.width, 1)))
        self.canvas.set_zoom(zoom)
        self.refresh()
        self._fit_window()
        self.log(f"{session.num_frames} frames of {session.width}x{session.height} "
                 f"(original {session.original_size[1]}x{session.original_size[0]}), "
                 f"{session.num_objects} object(s); device {session.nets.device}")

    # ------------------------------------------------------------------ panel
    def _interaction_box(self) -> QGroupBox:
        box = QGroupBox("Interaction")
        grid = QGridLayout(box)
        self.mode_group = QButtonGroup(self)
        for i, (mode, text) in enumerate((("click", "Click"), ("scribble", "Scribble"),
                                          ("free", "Free-hand"))):
            b = QRadioButton(text)
            b.setChecked(mode == self.mode)
            b.toggled.connect(lambda on, m=mode: on and self.set_mode(m))
            self.mode_group.addButton(b, i)
            grid.addWidget(b, 0 if i < 2 else 1, i % 2)
        self.brush_label = QLabel()
        self.brush_slider = QSlider(Qt.Orientation.Horizontal)
        self.brush_slider.setRange(1, 100)
        self.brush_slider.valueChanged.connect(self._on_brush)
        self.brush_slider.setValue(self.session.settings.brush_radius)
        self._on_brush(self.brush_slider.value())
        grid.addWidget(self.brush_label, 2, 0)
        grid.addWidget(self.brush_slider, 2, 1)
        return box

    def _objects_box(self) -> QGroupBox:
        box = QGroupBox("Objects")
        lay = QVBoxLayout(box)
        self.object_list = QListWidget()
        self.object_list.setIconSize(QSize(14, 14))
        self.object_list.currentRowChanged.connect(lambda row: row >= 0 and self.select_object(row + 1))
        add = QPushButton("Add object")
        add.clicked.connect(self.add_object)
        lay.addWidget(self.object_list, 1)
        lay.addWidget(add)
        self._fill_objects()
        return box

    def _actions_box(self) -> QGroupBox:
        box = QGroupBox("Actions")
        grid = QGridLayout(box)
        self.buttons: dict[str, QPushButton] = {}
        for i, (name, text, fn) in enumerate((
                ("commit", "Commit", self.commit), ("undo", "Undo", self.undo),
                ("reset", "Reset frame", self.reset_frame),
                ("finish_local", "Finish local", self.finish_local),
                ("propagate", "Propagate", self.propagate))):
            b = QPushButton(text)
            b.clicked.connect(fn)
            self.buttons[name] = b
            if name == "propagate":
                grid.addWidget(b, 2, 0, 1, 2)
            else:
                grid.addWidget(b, i // 2, i % 2)
        return box

    def _view_box(self) -> QGroupBox:
        box = QGroupBox("View")
        grid = QGridLayout(box)
        self.overlay_combo = QComboBox()
        self.overlay_combo.addItems(OVERLAY_MODES)
        self.overlay_combo.setCurrentText(self.overlay_mode)
        self.overlay_combo.currentTextChanged.connect(self.set_overlay_mode)
        zoom_out, zoom_in = QPushButton("Zoom -"), QPushButton("Zoom +")
        zoom_out.clicked.connect(lambda: self.set_zoom(self.canvas.zoom * 0.8))
        zoom_in.clicked.connect(lambda: self.set_zoom(self.canvas.zoom * 1.25))
        grid.addWidget(QLabel("Overlay"), 0, 0)
        grid.addWidget(self.overlay_combo, 0, 1)
        grid.addWidget(zoom_out, 1, 0)
        grid.addWidget(zoom_in, 1, 1)
        return box

    def _files_box(self) -> QGroupBox:
        box = QGroupBox("Files")
        grid = QGridLayout(box)
        for i, (text, fn) in enumerate((("Save masks...", self._ask_save),
                                        ("Load masks...", self._ask_load_masks),
                                        ("Save session...", self._ask_save_session))):
            b = QPushButton(text)
            b.clicked.connect(fn)
            self.buttons[text] = b
            grid.addWidget(b, i // 2, i % 2)
        return box

    def _shortcuts(self) -> None:
        def key(seq: Any, fn: Callable[[], Any]) -> None:
            QShortcut(QKeySequence(seq), self, activated=fn)

        key(Qt.Key.Key_Left, lambda: self.slider.setValue(self.slider.value() - 1))
        key(Qt.Key.Key_Right, lambda: self.slider.setValue(self.slider.value() + 1))
        key(Qt.Key.Key_Space, lambda: self.play_button.toggle())
        key(QKeySequence.StandardKey.Undo, self.undo)
        key("Ctrl+Return", self.propagate)
        key(Qt.Key.Key_Escape, self.cancel)
        for k in range(1, 10):
            key(str(k), lambda k=k: k <= self.session.num_objects and self.select_object(k))

    def _fit_window(self) -> None:
        w = min(self.canvas.width() + 290, 1600)
        h = min(self.canvas.height() + 230, 1000)
        self.resize(max(w, 900), max(h, 600))

    def _fill_objects(self) -> None:
        self.object_list.blockSignals(True)
        self.object_list.clear()
        for k in range(1, self.session.num_objects + 1):
            pix = QPixmap(14, 14)
            pix.fill(QColor(*object_colour(k)))
            QListWidgetItem(QIcon(pix), f"Object {k}", self.object_list)
        self.object_list.setCurrentRow(self.session.object - 1)
        self.object_list.blockSignals(False)

    # ------------------------------------------------------------------ view
    def log(self, text: str) -> None:
        self.console.appendPlainText(text)
        log.info("%s", text)

    def view_array(self) -> np.ndarray:
        """The current view (frame, mask in the overlay mode, open strokes, clicks, ROI box)."""
        s = self.session
        view = render_mask(s.image(), s.mask(), self.overlay_mode)
        g = s.open_group()
        if g is not None and g.labels is not None:
            draw_scribbles(view, g.labels)
        if g is not None and g.clicks:
            draw_clicks(view, [(c.y, c.x, c.object_id, c.positive) for c in g.clicks])
        draw_box(view, s.local_box)
        return view

    def refresh(self) -> None:
        s = self.session
        self.canvas.set_image(to_qimage(self.view_array()))
        self.slider.blockSignals(True)
        self.slider.setValue(s.frame)
        self.slider.blockSignals(False)
        pending = " (edited)" if s.frame in s.edits else ""
        interacted = " (interacted)" if s.frame in s.core.interacted else ""
        self.frame_label.setText(f"{s.frame + 1} / {s.num_frames}{pending}{interacted}")
        if self.object_list.count() != s.num_objects:
            self._fill_objects()
        elif self.object_list.currentRow() != s.object - 1:
            self.object_list.blockSignals(True)
            self.object_list.setCurrentRow(s.object - 1)
            self.object_list.blockSignals(False)
        self.buttons["finish_local"].setEnabled(s.local_box is not None and not self.runner.busy)
        self.buttons["undo"].setEnabled(s.can_undo() and not self.runner.busy)

    def set_overlay_mode(self, mode: str) -> None:
        self.overlay_mode = mode
        self.refresh()

    def set_zoom(self, zoom: float) -> None:
        self.canvas.set_zoom(zoom)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.canvas.show_brush = mode == "free"
        button = self.mode_group.button(MODES.index(mode))
        if not button.isChecked():
            button.setChecked(True)
        self.canvas.update()

    def _on_brush(self, value: int) -> None:
        self.canvas.brush_radius = float(value)
        self.brush_label.setText(f"Brush {value}")
        self.canvas.update()

    # ------------------------------------------------------------------ running jobs
    def _on_busy(self, busy: bool) -> None:
        for w in (self.canvas, self.slider, self.play_button, self.object_list,
                  *self.buttons.values()):
            w.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.refresh()

    def _on_progress(self, done: int, total: int) -> None:
        """Frames done of a propagation (or files of a save); (0, 0) clears the bar."""
        self.progress.setTextVisible(total > 0)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def run_job(self, job: Callable[[Callable, Callable], ActionResult], user_s: float = 0.0,
                after: Callable[[ActionResult | None], None] | None = None,
                timed: bool = True) -> bool:
        """Run a session call on the worker thread and log it; ``timed`` actions count towards
        the user / compute times. ``after(result)`` runs when it ends (result None when it
        failed or was cancelled)."""
        if self.runner.busy:
            self.log("busy: wait for the running computation or cancel it")
            return False
        self._on_progress(0, 0)

        def done(result: ActionResult) -> None:
            if timed:
                self.session.record_time(user_s, result.compute_s)
                self.log(self.session.timing_line(result, user_s))
            else:
                self.log(f"{result.message} ({result.compute_s:.2f} s)")
            self._idle_since = time.perf_counter()
            self.refresh()
            if after is not None:
                after(result)

        def failed(exc: BaseException) -> None:
            self._idle_since = time.perf_counter()
            if isinstance(exc, PropagationCancelled):
                self.log("propagation cancelled; the video is as it was before")
            elif isinstance(exc, (ActionError, ValueError, FileNotFoundError)):
                self.log(f"not done: {exc}")
                self._last_error = exc
            else:
                self.log(f"error: {type(exc).__name__}: {exc}")
                log.error("%s", getattr(exc, "traceback_text", ""))
                self._last_error = exc
            self.refresh()
            if after is not None:
                after(None)

        self.runner.submit(job, done, failed)
        return True

    def _user_time(self) -> float:
        """Seconds since the last computation ended: the user's time for this action."""
        return time.perf_counter() - self._idle_since

    # ------------------------------------------------------------------ user actions
    def _on_stroke(self, points: list, positive: bool) -> None:
        s = self.session
        user_s = self._user_time()
        if self.mode == "click":
            x, y = points[-1]
            self.run_job(lambda p, c: s.click(x, y, positive), user_s)
        elif self.mode == "scribble":
            self.run_job(lambda p, c: s.scribble(points, positive), user_s)
        else:
            r = float(self.brush_slider.value())
            self.run_job(lambda p, c: s.free(points, r, positive), user_s)

    def _on_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        try:
            result = self.session.set_local_box(x0, y0, x1, y1)
        except ActionError as exc:
            self.log(f"not done: {exc}")
            return
        self.log(result.message + " (interactions now act inside the box; Finish local ends it)")
        self.refresh()

    def goto(self, t: int) -> None:
        if self.runner.busy:
            return
        t = min(max(int(t), 0), self.session.num_frames - 1)
        if t != self.session.frame:
            self.session.goto(t)
        self.refresh()

    def select_object(self, k: int) -> None:
        if self.runner.busy:
            return
        self.session.select_object(k)
        self.refresh()

    def add_object(self) -> None:
        if self.runner.busy:
            return
        self.run_job(lambda p, c: ActionResult(f"object {self._add_and_select()} added"))

    def _add_and_select(self) -> int:
        k = self.session.add_object()
        self.session.object = k
        return k

    def commit(self) -> None:
        self.run_job(lambda p, c: self.session.commit(), self._user_time())

    def undo(self) -> None:
        self.run_job(lambda p, c: self.session.undo(), self._user_time())

    def reset_frame(self) -> None:
        self.run_job(lambda p, c: self.session.reset_frame(), self._user_time())

    def finish_local(self) -> None:
        self.run_job(lambda p, c: self.session.finish_local(), self._user_time())

    def propagate(self) -> None:
        lo, hi = self.session.propagation_range()
        self.log(f"propagating from frame {self.session.frame} over frames {lo}..{hi} ...")
        self.run_job(lambda p, c: self.session.propagate(p, c), self._user_time())

    def cancel(self) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self.log("cancelling ...")

    def _toggle_play(self, on: bool) -> None:
        if on:
            self.play_timer.start()
            self.play_button.setText("Pause")
        else:
            self.play_timer.stop()
            self.play_button.setText("Play")

    def _play_step(self) -> None:
        if self.runner.busy:
            return
        if self.session.frame >= self.session.num_frames - 1:
            self.play_button.setChecked(False)
            return
        self.goto(self.session.frame + 1)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, after: Callable[[ActionResult | None], None] | None = None
             ) -> bool:
        return self.run_job(lambda p, c: self.session.save(folder, progress=p), after=after,
                            timed=False)

    def save_session(self, folder: str | Path,
                     after: Callable[[ActionResult | None], None] | None = None) -> bool:
        return self.run_job(lambda p, c: self.session.save_session(folder), after=after,
                            timed=False)

    def load_masks(self, folder: str | Path) -> bool:
        return self.run_job(lambda p, c: self.session.load_masks(folder), timed=False)

    def _ask_save(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save masks, overlays and video to")
        if folder:
            self.save(folder)

    def _ask_load_masks(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Load masks from")
        if folder:
            self.load_masks(folder)

    def _ask_save_session(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the session to")
        if folder:
            self.save_session(folder)

    def screenshot(self, path: str | Path) -> Path:
        """Save the window as a PNG."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path), "PNG"):
            raise OSError(f"could not write the screenshot {path}")
        return path

    # ------------------------------------------------------------------ replay
    def replay(self, actions: list[dict[str, Any]], on_finished: Callable[[bool], None]) -> None:
        """Apply ``actions`` one after the other on the worker thread; on_finished(ok) when the
        last one is done or one fails."""
        remaining = list(actions)

        def step(result: ActionResult | None = None, first: bool = False) -> None:
            if not first and result is None:
                on_finished(False)
                return
            if not remaining:
                on_finished(True)
                return
            action = remaining.pop(0)
            kind = action.get("inner", "scribble") if action.get("type") == "local" else action.get("type")
            if kind in MODES:  # the panel follows the replayed interaction
                self.set_mode(kind)
                if kind == "free" and action.get("radius") is not None:
                    self.brush_slider.setValue(round(action["radius"] / self.session.scale[0]))
            self.run_job(lambda p, c: self.session.apply_action(action, p, c), after=step)

        step(first=True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.play_timer.stop()
        self.runner.shutdown()
        super().closeEvent(event)
