"""Interaction-to-mask modules with a lite S2M (random weights)."""

from __future__ import annotations

import pytest
import torch

from inference.interact.interactions import (
    Click,
    ClickInteraction,
    FreeHandInteraction,
    LocalControl,
    ScribbleInteraction,
    scribble_maps,
)
from inference.interact.s2m_controller import S2MController
from model.presets import build_s2m

H, W = 48, 64


class RecordingS2M(torch.nn.Module):
    """Returns +10 where the positive map is set, -10 elsewhere; records its inputs."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.where(x[:, 4:5] > 0, 10.0, -10.0)


@pytest.fixture(scope="module")
def lite_controller():
    torch.manual_seed(0)
    return S2MController(build_s2m("lite").eval())


def frame_and_prob(k=2):
    torch.manual_seed(1)
    image = torch.rand(3, H, W)
    labels = torch.zeros(H, W, dtype=torch.long)
    labels[5:20, 5:25] = 1
    if k > 1:
        labels[25:40, 30:60] = 2
    prob = torch.nn.functional.one_hot(labels, k + 1).permute(2, 0, 1).float()
    return image, prob


def test_scribble_maps_positive_negative_and_dilation():
    labels = torch.full((10, 10), -1)
    labels[2, 2] = 1
    labels[7, 7] = 0
    labels[5, 8] = 2
    pos, neg = scribble_maps(labels, 2)
    assert pos[0, 1:4, 1:4].all() and pos[0].sum() == 9  # 3x3 dilation of one pixel
    # object 1's negatives: background stroke and object 2's stroke
    assert neg[0, 7, 7] == 1 and neg[0, 5, 8] == 1 and neg[0, 2, 2] == 0
    # object 2's negatives include object 1's stroke
    assert neg[1, 2, 2] == 1 and pos[1, 5, 8] == 1


def test_s2m_inputs_follow_spec_order():
    net = RecordingS2M()
    ctrl = S2MController(net)
    image, prob = frame_and_prob()
    labels = torch.full((H, W), -1)
    labels[10, 10] = 1
    labels[30, 40] = 0
    out = ScribbleInteraction(labels, ctrl).apply(image, prob)
    assert len(net.inputs) == 2  # one forward per object, as the original runs S2M
    x = torch.cat(net.inputs)
    assert x.shape[:2] == (2, 6)  # one row per object, 6 channels
    # channel 3: existing hard mask of that object (48 x 64 needs no padding)
    assert torch.equal(x[0, 3], (prob.argmax(0) == 1).float())
    assert torch.equal(x[1, 3], (prob.argmax(0) == 2).float())
    assert x[0, 4, 10, 10] == 1 and x[0, 5, 30, 40] == 1
    assert x[1, 4].sum() == 0 and x[1, 5, 10, 10] == 1
    # hard aggregation: one-hot output; the scribbled pixel goes to object 1
    assert torch.allclose(out.sum(0), torch.ones(H, W), atol=1e-5)
    assert out.argmax(0)[10, 10] == 1
    assert ((out > 0.999) | (out < 1e-3)).all()


def test_scribble_with_lite_s2m_returns_distribution(lite_controller):
    image, prob = frame_and_prob()
    labels = torch.full((H, W), -1)
    labels[10:12, 8:20] = 1
    out = ScribbleInteraction(labels, lite_controller).apply(image, prob)
    assert out.shape == prob.shape
    assert torch.allclose(out.sum(0), torch.ones(H, W), atol=1e-4)


def test_clicks_become_disks_for_s2m():
    net = RecordingS2M()
    ctrl = S2MController(net)
    image, prob = frame_and_prob()
    out = ClickInteraction([Click(20, 30, 1, True), Click(40, 10, 1, False)], ctrl, radius=3).apply(image, prob)
    x = net.inputs[0]
    pos = x[0, 4]
    assert pos[20, 30] == 1 and pos[20, 33] == 1 and pos[20, 34] == 0 and pos.sum() > 20
    assert x[0, 5, 40, 10] == 1  # negative click -> background stroke -> negative map
    assert out.argmax(0)[20, 30] == 1


def test_freehand_changes_only_the_region():
    image, prob = frame_and_prob()
    region = torch.zeros(H, W, dtype=torch.bool)
    region[30:35, 2:10] = True
    out = FreeHandInteraction(region, 2).apply(image, prob)
    assert torch.equal(out[:, ~region], prob[:, ~region])
    assert (out.argmax(0)[region] == 2).all()
    erase = torch.zeros(H, W, dtype=torch.bool)
    erase[5:10, 5:10] = True
    out2 = FreeHandInteraction(erase, 1, erase=True).apply(image, prob)
    assert (out2.argmax(0)[erase] == 0).all()
    assert torch.equal(out2[:, ~erase], prob[:, ~erase])
    assert torch.allclose(out2.sum(0), torch.ones(H, W))


def test_local_control_leaves_outside_untouched(lite_controller):
    image, prob = frame_and_prob()
    labels = torch.full((H, W), -1)
    labels[28:31, 35:45] = 2
    box = (20, 25, 44, 62)  # top, left, bottom, right (inclusive)
    inner = ScribbleInteraction(labels, lite_controller)
    out = LocalControl(box, inner, work_size=64).apply(image, prob)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[box[0]:box[2] + 1, box[1]:box[3] + 1] = True
    assert torch.equal(out[:, ~inside], prob[:, ~inside])
    assert torch.allclose(out[:, inside].sum(0), torch.ones(int(inside.sum())), atol=1e-4)
    # the 3-px margin inside the box is kept from the previous result too
    assert torch.equal(out[:, box[0]:box[0] + 3, box[1]:box[3] + 1], prob[:, box[0]:box[0] + 3, box[1]:box[3] + 1])


def test_local_control_runs_inner_at_working_size():
    net = RecordingS2M()
    ctrl = S2MController(net)
    image, prob = frame_and_prob()
    labels = torch.full((H, W), -1)
    labels[30, 40] = 2
    LocalControl((20, 30, 39, 59), ScribbleInteraction(labels, ctrl), work_size=96).apply(image, prob)
    x = torch.cat(net.inputs)  # one forward per object
    assert min(x.shape[-2:]) >= 96  # the 20 x 30 crop was upscaled to a 96-px shorter side
    assert x[1, 4].sum() > 0  # the scribble moved along with the crop


def test_bad_interactions():
    image, prob = frame_and_prob()
    ctrl = S2MController(RecordingS2M())
    with pytest.raises(ValueError, match="empty interaction"):
        ScribbleInteraction(torch.full((H, W), -1), ctrl).apply(image, prob)
    bad = torch.full((H, W), -1)
    bad[0, 0] = 7
    with pytest.raises(ValueError, match=r"unknown objects \[7\]"):
        ScribbleInteraction(bad, ctrl).apply(image, prob)
    with pytest.raises(ValueError, match="empty interaction"):
        ClickInteraction([], ctrl).apply(image, prob)
    with pytest.raises(ValueError, match="outside"):
        ClickInteraction([Click(H + 5, 0, 1)], ctrl).apply(image, prob)
    with pytest.raises(ValueError, match="empty"):
        FreeHandInteraction(torch.zeros(H, W, dtype=torch.bool), 1).apply(image, prob)
    with pytest.raises(ValueError, match="not inside"):
        LocalControl((0, 0, H, W), FreeHandInteraction(torch.ones(H, W, dtype=torch.bool), 1)).apply(image, prob)
    with pytest.raises(ValueError, match="same size"):
        ctrl(image, torch.zeros(H + 1, W), torch.zeros(1, H, W), torch.zeros(1, H, W))
