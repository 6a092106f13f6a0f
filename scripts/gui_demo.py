"""A generated video to try the annotation GUI on, and the screenshot in docs/.

    python scripts/gui_demo.py --out runs/gui_demo                  # frames/, gt/, demo.json
    python scripts/gui_demo.py --out runs/gui_demo --screenshot docs/gui_screenshot.png

Writes a 24-frame, 432 x 240 procedural video with 3 objects (``frames/*.jpg``), its ground
truth (``gt/*.png``) and a replay file (``demo.json``: a free-hand stroke inside a local-control
box on frame 12). With ``--screenshot`` it then runs the GUI's replay mode on it with the
ground truth loaded as the current result (``--masks``), lite networks with random weights, and
saves the window. Then try it by hand::

    python interactive_gui.py --images runs/gui_demo/frames --masks runs/gui_demo/gt \\
        --preset lite --random-weights --resolution -1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEMO_ACTIONS = [
    {"frame": 12, "object": 2, "type": "local", "inner": "free", "positive": True,
     "points": [[252, 96], [258, 104], [262, 112]], "radius": 3, "box": [205, 70, 280, 145]},
]


def write_demo(out: Path, seed: int = 3) -> None:
    from PIL import Image

    from dataset.synthetic import SequenceSpec, generate_sequence
    from util.fileio import atomic_save_json
    from util.palette import write_palette_png

    seq = generate_sequence(SequenceSpec("gui-demo", 24, 240, 432, 3), seed)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    for t in range(len(seq.images)):
        Image.fromarray(seq.images[t]).save(out / "frames" / f"{t:05d}.jpg", quality=92)
        write_palette_png(out / "gt" / f"{t:05d}.png", seq.masks[t])
    atomic_save_json(out / "demo.json", DEMO_ACTIONS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gui_demo", help="output folder")
    p.add_argument("--screenshot", help="run the demo replay and save the window here (PNG)")
    args = p.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    out = Path(args.out)
    write_demo(out)
    print(json.dumps({"frames": str(out / "frames"), "gt": str(out / "gt"),
                      "replay": str(out / "demo.json")}))
    if not args.screenshot:
        return 0
    import interactive_gui

    return interactive_gui.main([
        "--images", str(out / "frames"), "--masks", str(out / "gt"), "--preset", "lite",
        "--random-weights", "--device", "cpu", "--resolution", "-1",
        "--replay", str(out / "demo.json"), "--screenshot", args.screenshot])


if __name__ == "__main__":
    sys.exit(main())
