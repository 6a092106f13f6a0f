"""The annotation GUI: the Qt-free session, the window offscreen, and the replay command.

Lite networks with random weights; small generated videos. Free-hand painting and masks
loaded from disk are exact, so the tests assert on their results; for S2M (random weights)
they assert only where its output must land (the frame, the local-control box).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset.synthetic import SequenceSpec, generate_sequence  # noqa: E402
from gui.controller import (  # noqa: E402
    ActionError,
    PropagationCancelled,
    Session,
    SessionSettings,
    load_actions,
)
from gui.core_state import affected_range  # noqa: E402
from gui.models import ARCHITECTURES, WeightFiles, build_networks  # noqa: E402
from gui.render import OVERLAY_MODES, object_colour, render_mask  # noqa: E402
from util.palette import read_mask, write_palette_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T, H, W = 8, 64, 96


def _write_video(root: Path, frames: int, seed: int = 0, objects: int = 2) -> tuple[Path, Path, np.ndarray]:
    seq = generate_sequence(SequenceSpec("gui", frames, H, W, objects), seed)
    img_dir, gt_dir = root / "frames", root / "gt"
    img_dir.mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(seq.images[t]).save(img_dir / f"{t:05d}.png")
        write_palette_png(gt_dir / f"{t:05d}.png", seq.masks[t])
    return img_dir, gt_dir, seq.masks


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("gui_video"), T)


@pytest.fixture(scope="module")
def nets():
    return build_networks("mivos", "lite", WeightFiles(), random_weights=True, seed=0)


def _settings(**kw) -> SessionSettings:
    base = dict(preset="lite", random_weights=True, resolution=-1, num_objects=1, local_size=64,
                prob_dtype="float32")
    base.update(kw)
    return SessionSettings(**base)


def _session(video, nets, **kw) -> Session:
    return Session.open(video[0], _settings(**kw), nets=nets)


def _disk(x: int, y: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - x) ** 2 + (yy - y) ** 2 <= r * r


# ---------------------------------------------------------------------------------- Qt-free


def test_architectures_in_one_table():
    from model.presets import PROPAGATION_ARCHS

    assert "mivos" in ARCHITECTURES and set(ARCHITECTURES) <= set(PROPAGATION_ARCHS)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_networks("nope", "lite", WeightFiles(), random_weights=True)
    with pytest.raises(ValueError, match="--random-weights"):
        build_networks("mivos", "lite", WeightFiles(), random_weights=False)


def test_free_hand_is_exact_and_undo_restores(video, nets):
    s = _session(video, nets)
    s.free([(30, 20)], radius=6)
    painted = s.mask()
    np.testing.assert_array_equal(painted == 1, _disk(30, 20, 6))
    s.free([(30, 20)], radius=3, positive=False)  # erase the middle
    np.testing.assert_array_equal(s.mask() == 1, _disk(30, 20, 6) & ~_disk(30, 20, 3))
    s.undo()
    np.testing.assert_array_equal(s.mask(), painted)
    s.reset_frame()
    assert not s.mask().any()
    s.undo()
    np.testing.assert_array_equal(s.mask(), painted)
    s.undo()
    assert not s.mask().any() and s.pending_frames() == []
    assert "nothing to undo" in s.undo().message


def test_scribble_click_and_local_control(video, nets):
    s = _session(video, nets, num_objects=2)
    s.scribble([(10, 10), (40, 30)], positive=True)
    assert s.open_group().kind == "scribble" and (s.open_group().labels == 1).sum() > 30
    s.select_object(2)
    s.scribble([(60, 40), (80, 50)], positive=True)  # same group, two objects
    assert set(np.unique(s.open_group().labels)) == {-1, 1, 2}
    s.commit()
    assert s.open_group() is None
    before = s.mask().copy()
    s.click(70, 20, positive=False)
    s.click(20, 50, positive=True)
    assert len(s.open_group().clicks) == 2
    # local control: only the box may change
    before = s.mask().copy()
    s.set_local_box(50, 5, 90, 40)
    s.scribble([(60, 10), (80, 30)])
    outside = np.ones((H, W), bool)
    outside[5:41, 50:91] = False
    np.testing.assert_array_equal(s.mask()[outside], before[outside])
    s.free([(0, 0), (95, 63)], radius=2)  # clipped to the box
    np.testing.assert_array_equal(s.mask()[outside], before[outside])
    assert s.finish_local().message.startswith("local control finished")
    kinds = [a.get("type") for a in s.actions]
    assert kinds.count("local") == 2 and kinds.count("click") == 2 and kinds.count("scribble") == 2
    with pytest.raises(ActionError, match="outside"):
        s.scribble([(200, 10)])


def test_objects_added_at_any_frame_beyond_nine(video, nets):
    s = _session(video, nets)
    s.goto(3)
    s.free([(10, 10)], radius=3)
    s.select_object(12)  # adds objects 2..12
    assert s.num_objects == 12 and s.object == 12
    s.free([(60, 40)], radius=4)
    assert s.mask()[40, 60] == 12 and s.mask()[10, 10] == 1
    colours = {object_colour(k) for k in range(1, 13)}
    assert len(colours) == 12


def test_propagate_oracle_masks_and_save(video, nets, tmp_path):
    img_dir, gt_dir, gt = video
    s = _session(video, nets, resolution=48)  # working 48 x 72, saved at 64 x 96
    s.load_masks(gt_dir)
    assert s.num_objects == 2
    s.goto(0)
    result = s.propagate()
    assert result.frames_changed == (0, T - 1) and s.core.interacted == [0]
    s.save(tmp_path / "out")
    masks = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert len(masks) == T
    first = read_mask(masks[0])
    assert first.shape == (H, W)
    # the committed frame is the (downsampled, upsampled) ground truth
    small = cv2.resize(gt[0], (72, 48), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(first, cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST))
    assert len(list((tmp_path / "out" / "overlay").glob("*.png"))) == T
    assert (tmp_path / "out" / "overlay.mp4").exists() or (tmp_path / "out" / "overlay").is_dir()


def test_propagation_stops_at_interacted_frames_and_fuses(video, nets):
    s = _session(video, nets)
    s.free([(20, 20)], radius=5)
    s.propagate()
    s.goto(5)
    s.free([(70, 40)], radius=5)
    assert s.propagation_range() == (1, T - 1)
    s.propagate()
    s.goto(2)
    s.free([(40, 30)], radius=4)
    assert affected_range(s.core, 2) == (1, 4)
    frame6 = s.mask(6).copy()
    s.propagate()
    np.testing.assert_array_equal(s.mask(6), frame6)  # beyond the interacted frame 5
    assert (s.mask(2)[_disk(40, 30, 4)] == 1).all() and s.core.interacted == [0, 5, 2]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_cancel_restores_the_video(video, nets, dtype):
    s = _session(video, nets, prob_dtype=dtype)
    s.free([(20, 20)], radius=5)
    s.propagate()
    before_masks = s.core.masks.copy()
    before_prob = s.core.prob.clone()
    s.goto(4)
    s.free([(60, 30)], radius=6)
    shown = s.mask().copy()
    calls = []
    with pytest.raises(PropagationCancelled):
        s.propagate(progress=lambda d, t: calls.append(d), cancelled=lambda: len(calls) >= 2)
    assert len(calls) == 2
    assert s.core.interacted == [0]
    if dtype == "uint8":
        assert torch.equal(s.core.prob, before_prob)
    else:  # the snapshot keeps probabilities to 1/255
        assert (s.core.prob - before_prob).abs().max() <= 0.5 / 255 + 1e-6
    expected = before_masks.copy()
    expected[4] = shown  # the unpropagated edit is still shown
    np.testing.assert_array_equal(s.core.masks, expected)
    assert s.pending_frames() == [4]
    s.propagate()  # and it can go on
    assert s.core.interacted == [0, 4]


def test_session_save_and_reopen(video, nets, tmp_path):
    # uint8 storage: the saved state is exact
    s = _session(video, nets, num_objects=1, prob_dtype="uint8")
    s.free([(20, 20)], radius=5)
    s.propagate()
    s.goto(6)
    s.select_object(2)  # a new object, added after the first propagation
    s.free([(70, 40)], radius=5)
    s.propagate()
    s.goto(3)
    s.free([(50, 30)], radius=3)  # pending, not propagated
    s.save_session(tmp_path / "sess")
    meta = json.loads((tmp_path / "sess" / "session.json").read_text())
    assert meta["interacted"] == [0, 6] and meta["pending"] == [3] and len(meta["actions"]) == 5

    r = Session.open(video[0], SessionSettings.from_dict(meta["settings"]), nets=nets)
    r.load_session(tmp_path / "sess")
    assert (r.frame, r.object, r.core.interacted) == (3, 2, [0, 6])
    assert r.core.permanent.num_permanent == 2
    for t in range(T):
        np.testing.assert_array_equal(r.mask(t), s.mask(t))
    # going on where it stopped: the result of the original session (up to float rounding:
    # the reopened memory encodes both objects in one batch, the original one at a time)
    s.propagate()
    r.propagate()
    for t in range(T):
        assert (r.mask(t) != s.mask(t)).mean() < 0.002
    r.undo()  # nothing left to undo on the propagated frame
    assert r.core.interacted == [0, 6, 3]


def test_replay_reproduces_a_session(video, nets, tmp_path):
    s = _session(video, nets)
    s.free([(20, 20), (30, 25)], radius=4)
    s.scribble([(60, 30), (70, 40)])
    s.undo()
    s.commit()
    s.propagate()
    s.goto(5)
    s.select_object(2)
    s.free([(70, 40)], radius=5)
    s.propagate()
    path = tmp_path / "actions.json"
    path.write_text(json.dumps(s.actions))
    r = _session(video, nets)
    for action in load_actions(path):
        r.apply_action(action)
    for t in range(T):
        np.testing.assert_array_equal(r.mask(t), s.mask(t))
    with pytest.raises(ActionError, match="unknown type"):
        r.apply_action({"frame": 0, "type": "lasso", "points": [[1, 1]]})
    with pytest.raises(ActionError, match="unknown action"):
        r.apply_action({"frame": 0, "action": "fly"})


def test_render_modes(video, nets):
    s = _session(video, nets)
    s.free([(40, 30)], radius=8)
    img, mask = s.image(), s.mask()
    for mode in OVERLAY_MODES:
        view = render_mask(img, mask, mode)
        assert view.shape == (H, W, 3) and view.dtype == np.uint8
    davis = render_mask(img, mask, "davis")
    assert (davis[mask == 0] == img[mask == 0]).all()
    assert (davis[30, 40] != img[30, 40]).any()


# ---------------------------------------------------------------------------------- Qt

QtWidgets = pytest.importorskip("PySide6.QtWidgets")


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def _wait_idle(app, window, timeout=60.0):
    end = time.perf_counter() + timeout
    while window.runner.busy:
        app.processEvents()
        time.sleep(0.002)
        assert time.perf_counter() < end, "the worker did not finish"
    app.processEvents()


def _grab(window) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = window.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    return np.frombuffer(img.constBits(), np.uint8).reshape(h, bpl)[:, :3 * w].reshape(h, w, 3).copy()


def _canvas_view(window) -> np.ndarray:
    """The canvas as shown in the window, brought back to image pixels."""
    from PySide6.QtCore import QPoint

    shot = _grab(window)
    c = window.canvas
    top_left = c.mapTo(window, QPoint(0, 0))
    crop = shot[top_left.y():top_left.y() + c.height(), top_left.x():top_left.x() + c.width()]
    z = c.zoom
    ys = (np.arange(window.session.height) * z + z / 2).astype(int)
    xs = (np.arange(window.session.width) * z + z / 2).astype(int)
    return crop[ys][:, xs]


def test_window_strokes_and_screenshot(video, nets, qapp):
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest

    from gui.app import MainWindow

    s = _session(video, nets)
    win = MainWindow(s, zoom=2.0)
    win.show()
    qapp.processEvents()
    win.set_mode("free")
    win.brush_slider.setValue(5)
    c = win.canvas
    QTest.mousePress(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(60, 40))
    QTest.mouseMove(c, QPoint(70, 44))
    QTest.mouseRelease(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(80, 48))
    _wait_idle(qapp, win)
    assert s.mask()[20, 30] == 1 and s.mask()[24, 40] == 1 and s.mask()[50, 80] == 0
    assert "free-hand paint" in win.console.toPlainText()
    assert "user" in win.console.toPlainText() and "compute" in win.console.toPlainText()
    # the screenshot shows the overlay where the mask is, and the plain frame elsewhere
    win.set_mode("click")  # no brush cursor on the frame
    shown = _canvas_view(win).astype(int)
    img = s.image().astype(int)
    fg = s.mask() == 1
    inner = cv2.erode(fg.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    red = np.array(object_colour(1))
    assert np.abs(shown[inner] - (img[inner] + red) / 2).max() <= 2
    assert np.abs(shown[~fg] - img[~fg]).max() <= 1
    # local control box with Ctrl + drag, scribble inside, undo with the button
    win.set_mode("scribble")
    QTest.mousePress(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, QPoint(100, 10))
    QTest.mouseMove(c, QPoint(150, 60))
    QTest.mouseRelease(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, QPoint(180, 100))
    assert s.local_box == (5, 50, 50, 90)
    QTest.mousePress(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(120, 30))
    QTest.mouseRelease(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(160, 80))
    _wait_idle(qapp, win)
    assert s.actions[-1]["type"] == "local"
    win.buttons["undo"].click()
    _wait_idle(qapp, win)
    assert s.mask()[20, 30] == 1
    win.buttons["finish_local"].click()
    _wait_idle(qapp, win)
    assert s.local_box is None
    # click mode: right click = negative
    win.set_mode("click")
    QTest.mouseClick(c, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, QPoint(20, 20))
    _wait_idle(qapp, win)
    assert s.actions[-1]["type"] == "click" and s.actions[-1]["positive"] is False
    win.slider.setValue(3)
    assert s.frame == 3
    win.close()


def test_ui_stays_responsive_while_propagating_and_cancel(nets, qapp, tmp_path):
    from PySide6.QtCore import QTimer

    from gui.app import MainWindow

    img_dir, _, _ = _write_video(tmp_path, 40, seed=1)
    s = Session.open(img_dir, _settings(), nets=nets)
    win = MainWindow(s, zoom=1.0)
    win.show()
    s.free([(40, 30)], radius=8)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    progress: list[tuple[int, int]] = []
    win.runner.progress.connect(lambda d, t: progress.append((d, t)))
    start = time.perf_counter()
    win.propagate()
    assert win.runner.busy and not win.canvas.isEnabled() and win.cancel_button.isEnabled()
    _wait_idle(qapp, win)
    elapsed = time.perf_counter() - start
    timer.stop()
    assert progress[-1] == (39, 39)
    assert win.progress.value() == 39
    gaps = np.diff([start] + ticks)
    assert elapsed > 0.3 and len(ticks) > 10
    assert gaps.max() < 0.2, f"the UI thread stalled for {gaps.max():.3f} s"
    assert s.core.interacted == [0]
    # cancel: stop after a few frames, the video is back as it was
    before = s.core.masks.copy()
    s.goto(20)
    s.free([(70, 40)], radius=6)
    shown = s.mask().copy()
    progress.clear()

    def cancel_early(d, t):
        if d == 3:
            win.cancel()

    win.runner.progress.connect(cancel_early)
    win.propagate()
    _wait_idle(qapp, win)
    assert "cancelled" in win.console.toPlainText()
    assert s.core.interacted == [0]
    before[20] = shown
    np.testing.assert_array_equal(s.core.masks, before)
    win.close()


def test_command_line_errors(video, qapp, tmp_path):
    import interactive_gui

    replay = tmp_path / "r.json"
    replay.write_text("[]")
    missing = tmp_path / "none.pth"
    assert interactive_gui.main(["--images", str(video[0]), "--preset", "lite", "--replay",
                                 str(replay), "--s2m-model", str(missing)]) == 2
    with pytest.raises(SystemExit):
        interactive_gui.main(["--images", "a", "--video", "b"])
    with pytest.raises(SystemExit):
        interactive_gui.main(["--images", "a", "--screenshot", "x.png"])  # needs --replay


def test_replay_command_saves_every_frame_and_a_screenshot(video, tmp_path):
    """The replay mode end to end, as a fresh process would run it."""
    img_dir, gt_dir, gt = video
    actions = [
        {"frame": 0, "object": 1, "type": "free", "positive": True, "points": [[20, 20], [30, 25]],
         "radius": 5},
        {"frame": 0, "object": 2, "type": "scribble", "positive": True, "points": [[60, 20], [70, 40]]},
        {"frame": 0, "action": "undo"},
        {"frame": 0, "object": 2, "type": "click", "positive": True, "points": [[70, 30]]},
        {"frame": 0, "object": 1, "type": "local", "inner": "free", "positive": True,
         "points": [[50, 50]], "radius": 4, "box": [40, 40, 60, 60]},
        {"frame": 0, "action": "finish_local"},
        {"frame": 0, "action": "propagate"},
        {"frame": 5, "object": 3, "type": "free", "positive": True, "points": [[80, 50]], "radius": 6},
        {"frame": 5, "action": "propagate"},
    ]
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps(actions))
    out, shot = tmp_path / "out", tmp_path / "shot.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    cmd = [sys.executable, str(REPO / "interactive_gui.py"), "--images", str(img_dir),
           "--preset", "lite", "--random-weights", "--device", "cpu", "--resolution", "48",
           "--local-size", "64", "--zoom", "2", "--replay", str(replay), "--save", str(out),
           "--save-session", str(tmp_path / "sess"), "--screenshot", str(shot)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in masks] == [f"{t:05d}" for t in range(T)]
    labels = read_mask(masks[5])
    assert labels.shape == (H, W) and labels[50, 80] == 3
    assert read_mask(masks[0])[22, 25] == 1  # free-hand paint is exact
    assert len(list((out / "overlay").glob("*.png"))) == T
    # the screenshot holds the last frame's overlay, scaled by the zoom
    screen = np.asarray(Image.open(shot).convert("RGB"))
    frame5 = cv2.resize(np.asarray(Image.open(img_dir / "00005.png").convert("RGB")), (72, 48),
                        interpolation=cv2.INTER_CUBIC)
    meta = json.loads((tmp_path / "sess" / "session.json").read_text())
    assert meta["frame"] == 5 and len(meta["actions"]) == len(actions)
    with np.load(tmp_path / "sess" / "state" / "00005.npz") as state:
        small = state["labels"]  # the working-resolution mask shown at the end
    view = render_mask(frame5, small, "davis")
    assert (small > 0).any() and (view != frame5).any()
    template = cv2.resize(view, (144, 96), interpolation=cv2.INTER_NEAREST)
    score = cv2.matchTemplate(screen, template, cv2.TM_SQDIFF_NORMED).min()
    assert score < 0.02, score
    # --session reopens the saved session where it stopped
    import interactive_gui

    args = interactive_gui._build_parser().parse_args(["--session", str(tmp_path / "sess"),
                                                       "--device", "cpu"])
    session, notes = interactive_gui.open_session(args)
    assert "reopened" in notes[0] and session.frame == 5 and session.core.interacted == [0, 5]
    np.testing.assert_array_equal(session.mask(5), small)
    np.testing.assert_array_equal(session.original_mask(0), read_mask(masks[0]))
