"""scripts/probe_propagation.py: clip IoU bookkeeping and the command line, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dataset.synthetic import write_dataset
from model.checkpoint import save_weights
from model.presets import build_propagation
from tests._scripts import load_script
from train.propagation import PropagationOutput


def load_probe():
    return load_script("probe_propagation")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe") / "tiny"
    write_dataset(root, "tiny", seed=0)
    return root


class _Answer(torch.nn.Module):
    """Stands in for the network: answers the clip's own masks (or nothing)."""

    def __init__(self, oracle: bool):
        super().__init__()
        self.oracle = oracle

    def forward(self, frames, gt, sec, sel):
        probs = []
        for i in (1, 2):
            fg = gt[:, i] if self.oracle else torch.zeros_like(gt[:, i])
            probs.append(torch.cat([1 - fg, fg, torch.zeros_like(fg)], dim=1))
        return PropagationOutput(logits=tuple(probs), prob=tuple(probs))


def test_probe_counts_objects_and_scores_iou(tiny):
    probe = load_probe()
    seqs = ["tiny-000", "tiny-001", "tiny-002"]  # 1 / 2 / 3 objects, 10 / 8 / 12 frames
    miou, count = probe.probe(_Answer(True), tiny, seqs, gap=2, starts=[0, 5], size=None,
                              single=False)
    assert miou == pytest.approx(1.0)
    # clips (0, 2, 4) everywhere and (5, 7, 9) where 10 frames exist: tiny-001 has 8
    from util.palette import read_mask

    expected = 0
    for seq, starts in (("tiny-000", [0, 5]), ("tiny-001", [0]), ("tiny-002", [0, 5])):
        for t in starts:
            first = read_mask(tiny / "Annotations" / "480p" / seq / f"{t:05d}.png")
            for f in (t + 2, t + 4):
                later = read_mask(tiny / "Annotations" / "480p" / seq / f"{f:05d}.png")
                expected += sum(int((later == k).any()) for k in range(1, int(first.max()) + 1))
    assert count == expected > 0
    miou, _ = probe.probe(_Answer(False), tiny, seqs, gap=0, starts=[0], size=(32, 48),
                          single=True)
    assert miou == 0.0
    # sizes that are not multiples of 16 are padded for the network and cropped back
    miou, _ = probe.probe(_Answer(True), tiny, seqs, gap=1, starts=[0], size=(40, 60),
                          single=False)
    assert miou == pytest.approx(1.0)
    miou, n = probe.probe(None, tiny, seqs, gap=0, starts=[0], size=None, single=False)
    assert miou == 1.0 and n > 0


def test_command_line_table_and_json(tiny, tmp_path, capsys):
    probe = load_probe()
    torch.manual_seed(0)
    weights = tmp_path / "prop.pth"
    save_weights(build_propagation("lite"), weights)
    out = tmp_path / "probe.json"
    assert probe.main(["--root", str(tiny), "--split", "val", "--sequences", "2", "--preset",
                       "lite", "--model", f"random={weights}", "--sizes", "full", "32x48",
                       "--gaps", "0", "1", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | size | copy | gap 1 |"
    assert [row.split(" | ")[:2] for row in table[2:]] == [
        ["| mask of frame t", "full"], ["| mask of frame t", "32x48"], ["| random", "full"],
        ["| random", "32x48"]]
    data = json.loads(out.read_text())
    assert len(data["results"]) == 8
    assert all(0.0 <= r["mean_iou"] <= 1.0 and r["count"] > 0 for r in data["results"])
    # the baseline answers the copy probe exactly, and the objects move between frames
    base = {(r["size"], r["probe"]): r["mean_iou"] for r in data["results"]
            if r["model"] == "mask of frame t"}
    assert base[("full", "copy")] == 1.0 and base[("full", "gap 1")] < 1.0
    with pytest.raises(SystemExit, match="HxW"):
        probe.main(["--root", str(tiny), "--model", str(weights), "--preset", "lite",
                    "--sizes", "30by40"])
