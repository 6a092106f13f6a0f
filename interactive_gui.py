"""Annotation GUI: segment objects in a video with scribbles, clicks, free-hand painting and
local control, propagate them, correct, and save the masks.

    python interactive_gui.py --images DIR | --video FILE [--num-objects N] [--preset mivos|lite]
        [--s2m-model F --prop-model F --fusion-model F | --random-weights] [--device cpu|cuda]
        [--resolution 480] [--masks DIR]
    python interactive_gui.py --session DIR            # reopen a saved session
    python interactive_gui.py ... --replay actions.json --save OUT --screenshot shot.png

``--replay`` applies a list of actions (format in :mod:`gui.controller`) and exits, after
saving ``--save`` (masks/, overlay/, overlay.mp4) and ``--screenshot`` (the window as PNG).
Without a display, replay runs on Qt's offscreen platform. See docs/GUI.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _build_parser() -> argparse.ArgumentParser:
    from gui.models import ARCHITECTURES, DEFAULT_ARCH
    from gui.render import OVERLAY_MODES
    from util.config import parse_top_k

    p = argparse.ArgumentParser(prog="interactive_gui.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--images", help="folder of frames (jpg/png)")
    src.add_argument("--video", help="video file (anything OpenCV or PyAV decodes)")
    src.add_argument("--session", help="reopen a session folder written by 'Save session'")
    src.add_argument("--masks", help="folder of masks named after the frames, loaded as the "
                                     "current result (e.g. an earlier run); sets --num-objects "
                                     "to their largest label if that is larger")
    src.add_argument("--num-objects", type=int, default=1, help="objects at the start (more can "
                                                                 "be added at any frame)")
    src.add_argument("--resolution", type=int, default=480,
                     help="shorter side of the working frames (-1: original size); masks are "
                          "saved at the original size")
    net = p.add_argument_group("networks")
    net.add_argument("--arch", choices=sorted(ARCHITECTURES), default=DEFAULT_ARCH,
                     help="propagation architecture: mivos (the paper's) or stcn (MiVOS-STCN); "
                          "sets the defaults of --prop-model, --fusion-model and --top-k "
                          f"(default: {DEFAULT_ARCH})")
    net.add_argument("--preset", choices=["mivos", "lite"], default="mivos",
                     help="network widths (mivos: the official checkpoints)")
    net.add_argument("--s2m-model", default="saves/s2m.pth")
    net.add_argument("--prop-model", default=None,
                     help="propagation weights (default: saves/propagation_model.pth, with "
                          "--arch stcn saves/stcn.pth)")
    net.add_argument("--fusion-model", default=None,
                     help="fusion weights (default: saves/fusion.pth, with --arch stcn "
                          "saves/fusion_stcn.pth)")
    net.add_argument("--random-weights", action="store_true",
                     help="random initialisation instead of checkpoints (testing the tool)")
    net.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    net.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                    "available)")
    inf = p.add_argument_group("inference (memory options keep long videos bounded)")
    inf.add_argument("--top-k", type=parse_top_k, default=argparse.SUPPRESS,
                     help="top-k memory read or 'none' (default: 50, with --arch stcn 20)")
    inf.add_argument("--mem-every", type=int, default=5)
    inf.add_argument("--fusion", choices=["diff", "linear", "none"], default="diff")
    inf.add_argument("--prob-dtype", choices=["float32", "float16", "uint8"], default="float16",
                     help="storage of the per-frame probabilities")
    inf.add_argument("--result-storage", choices=["memory", "disk"], default="memory",
                     help="where the per-frame probabilities and label maps are kept; disk: an "
                          "anonymous temporary file, so that memory use stays flat on long "
                          "videos (results are identical)")
    inf.add_argument("--image-cache", type=int, default=64, help="normalised frames cached")
    inf.add_argument("--feature-cache-mb", type=float, default=1024.0)
    inf.add_argument("--memory-budget", type=int, default=None,
                     help="max affinity elements per chunk of the memory read")
    inf.add_argument("--frame-cache", type=int, default=64, help="decoded frames cached")
    inf.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                     help="autocast the networks in bfloat16 or float16 (default: float32). On a "
                          "CPU without native bf16 (AVX512_BF16 or AMX; fp16: AVX512_FP16 or "
                          "AMX_FP16) it would be emulated many times slower, so it falls back "
                          "to float32 with a warning; MIVOS_ALLOW_EMULATED_BF16=1 "
                          "(MIVOS_ALLOW_EMULATED_FP16=1) keeps it")
    ui = p.add_argument_group("interface")
    ui.add_argument("--overlay", choices=OVERLAY_MODES, default="davis", help="overlay mode")
    ui.add_argument("--zoom", type=float, default=None, help="initial zoom (default: fit ~640 px)")
    ui.add_argument("--brush-radius", type=int, default=3)
    ui.add_argument("--click-radius", type=int, default=5)
    ui.add_argument("--local-size", type=int, default=480,
                    help="S2M working size (shorter side) of a local-control crop")
    rp = p.add_argument_group("replay")
    rp.add_argument("--replay", help="JSON list of actions (or a session.json) to apply; then exit")
    rp.add_argument("--save", help="after the replay: write masks/, overlay/ and overlay.mp4 here")
    rp.add_argument("--save-session", help="after the replay: save the session here")
    rp.add_argument("--screenshot", help="after the replay: the window as PNG")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _settings(args: argparse.Namespace):
    import torch

    from gui.controller import SessionSettings
    from inference.arch import defaults_for
    from util.amp import long_amp_name, resolve_amp

    arch = defaults_for(args.arch)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the precision used on this device (float32 where the CPU would emulate --amp), which the
    # session file records
    amp = long_amp_name(resolve_amp(args.amp, device, what="interactive_gui.py --amp"))
    return SessionSettings(
        arch=args.arch, preset=args.preset, s2m_model=args.s2m_model,
        prop_model=args.prop_model or f"saves/{arch.prop_model}",
        fusion_model=args.fusion_model or f"saves/{arch.fusion_model}",
        random_weights=args.random_weights, seed=args.seed, device=device,
        resolution=args.resolution, num_objects=args.num_objects,
        top_k=getattr(args, "top_k", arch.top_k),
        mem_every=args.mem_every, fusion=args.fusion, prob_dtype=args.prob_dtype,
        result_storage=args.result_storage,
        image_cache=args.image_cache, feature_cache_mb=args.feature_cache_mb,
        memory_budget=args.memory_budget, amp=amp, frame_cache=args.frame_cache,
        click_radius=args.click_radius, brush_radius=args.brush_radius,
        local_size=args.local_size)


def _prepare_qt_environment(replay: bool) -> bool:
    """Never use the Qt plugins of the non-headless OpenCV wheel (it points
    QT_QPA_PLATFORM_PLUGIN_PATH at its own Qt 5); a replay without a display runs on the
    offscreen platform. Returns False when an interactive window cannot be shown."""
    plugin_path = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH", "")
    if "cv2" in plugin_path:
        del os.environ["QT_QPA_PLATFORM_PLUGIN_PATH"]
    if os.environ.get("QT_QPA_PLATFORM") or not sys.platform.startswith("linux"):
        return True
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return True
    if replay:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return True
    return False


def open_session(args: argparse.Namespace):
    """The Session the arguments describe (a reopened one for --session), and the messages of
    what was loaded."""
    from gui.controller import Session, SessionSettings

    if args.session:
        meta = Session.read_session_file(args.session)
        settings = SessionSettings.from_dict(meta["settings"])
        if args.device:
            settings.device = args.device
        source = args.images or args.video or meta["source"]
        session = Session.open(source, settings)
        return session, [session.load_session(args.session).message]
    session = Session.open(args.images or args.video, _settings(args))
    notes = [session.load_masks(args.masks).message] if args.masks else []
    return session, notes


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.session and bool(args.images) == bool(args.video):
        parser.error("give exactly one of --images DIR and --video FILE (or --session DIR)")
    if (args.save or args.screenshot or args.save_session) and not args.replay:
        parser.error("--save, --save-session and --screenshot go with --replay")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("interactive_gui")

    if not _prepare_qt_environment(replay=bool(args.replay)):
        log.error("no display (DISPLAY / WAYLAND_DISPLAY unset): the window cannot be shown; "
                  "use --replay, or set QT_QPA_PLATFORM")
        return 2
    from PySide6.QtWidgets import QApplication

    from gui.app import MainWindow
    from gui.controller import load_actions

    app = QApplication.instance() or QApplication(sys.argv[:1])
    try:
        actions = load_actions(args.replay) if args.replay else None
        session, notes = open_session(args)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    window = MainWindow(session, overlay_mode=args.overlay, zoom=args.zoom)
    for note in notes:
        window.log(note)
    window.show()
    if actions is None:
        return app.exec()

    status = {"code": 0}

    def finish(ok: bool) -> None:
        if not ok:
            log.error("replay stopped: %s", window._last_error)
            status["code"] = 1
            app.quit()
            return
        steps = []
        if args.save:
            steps.append(lambda after: window.save(args.save, after=after))
        if args.save_session:
            steps.append(lambda after: window.save_session(args.save_session, after=after))

        def next_step(result=True) -> None:
            if result is None:
                status["code"] = 1
                app.quit()
                return
            if steps:
                steps.pop(0)(next_step)
                return
            if args.screenshot:
                app.processEvents()
                log.info("screenshot: %s", window.screenshot(args.screenshot))
            app.quit()

        next_step()

    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, lambda: window.replay(actions, finish))
    app.exec()
    window.close()
    log.info("replay of %d actions done: user %.1f s, compute %.1f s", len(actions),
             session.user_time, session.compute_time)
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
