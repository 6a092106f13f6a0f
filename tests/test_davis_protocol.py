"""The DAVIS interactive driver computes what the original protocol computes (REFERENCE.md e).

* S2M's inputs at the padded size on constructed cases (a stroke in the outer pixels, a mask
  whose labels reach the padding), for both protocols;
* the empty-scribble rule of both protocols;
* the "others" rule and the query scaling of the memory read;
* end to end: the masks our driver submits after six interactions with fusion equal those of a
  plain restatement of the original protocol (tests/reference_mivos.py) given the same weights
  and scribbles.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference.davis_interactive import DavisEvalConfig, DavisSampleProcessor
from inference.inference_core import InferenceConfig
from model.presets import build_fusion, build_propagation, build_s2m
from model.propagation import others_masks
from util.davis_compat import ensure_compat

ensure_compat()

H, W, T = 40, 70, 10  # padded to 48 x 80: pad (left 5, right 5, top 4, bottom 4)


class SpyS2M(torch.nn.Module):
    """Records every input; the logit is high where the positive scribble is."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return x[:, 4:5] * 20 - 10


def stroke(points, obj):
    return {"path": [[float(x), float(y)] for x, y in points], "object_id": obj,
            "start_time": 0.0, "end_time": 1.0}


def scribble_dict(t, strokes, num_frames=T):
    lists = [[] for _ in range(num_frames)]
    lists[t] = strokes
    return {"scribbles": lists, "sequence": "constructed"}


def make_processor(protocol, s2m, k=2, fusion="none", seed=0, top_k=50, empty_scribble=None,
                   oracle=False):
    torch.manual_seed(seed)
    prop = build_propagation("lite").eval()
    fusion_net = build_fusion("lite").eval() if fusion == "diff" else None
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    gt = np.zeros((T, H, W), np.uint8)
    gt[:, 5:20, 5:30] = 1
    if k > 1:
        gt[:, 22:38, 35:65] = 2
    config = DavisEvalConfig(davis_root="unused", output="unused", protocol=protocol,
                             empty_scribble=empty_scribble, oracle=oracle,
                             inference=InferenceConfig(fusion=fusion, top_k=top_k))
    return DavisSampleProcessor(frames, gt, k, prop, fusion_net, s2m, config, torch.device("cpu"))


def test_mivos_protocol_feeds_s2m_at_the_padded_size():
    s2m = SpyS2M()
    proc = make_processor("mivos", s2m)
    assert (proc.core.ph, proc.core.pw) == (48, 80)
    # object 1 covers the whole padded frame, padding included (as after a propagation)
    full = torch.zeros(3, 48, 80)
    full[1] = 1
    proc.core.update_mask_only(full, 3, padded=True)
    # a vertical object-2 stroke on the right edge (x = 1.0) and a background stroke at x = 0
    sc = scribble_dict(3, [stroke([(1.0, 0.2), (1.0, 0.8)], 2), stroke([(0.0, 0.5), (0.0, 0.9)], 0)])
    masks, nxt = proc.step(sc)
    assert nxt == [3]
    assert len(s2m.inputs) == 2  # one forward per object
    x1, x2 = s2m.inputs
    assert x1.shape == (1, 6, 48, 80)
    # existing mask: object 1 everywhere, padding included
    assert x1[0, 3].eq(1).all() and x2[0, 3].eq(0).all()
    # the stroke at x = 1.0 is rasterised at column 79 of the padded frame (stretched over the
    # padding), then dilated to 78: inside the right pad strip (columns 75..79)
    rows = slice(int(0.3 * 47), int(0.7 * 47))
    assert x2[0, 4, rows, 79].eq(1).all() and x2[0, 4, rows, 78].eq(1).all()
    assert x2[0, 4, :, :77].eq(0).all()
    # the background stroke at x = 0 sits in the left pad strip, negative for both objects
    assert x1[0, 5, rows.start + 15:rows.stop, 0].eq(1).all()
    assert x2[0, 5, rows.start + 15:rows.stop, 0].eq(1).all()
    # the stroke of object 2 is negative for object 1
    assert x1[0, 5, rows, 79].eq(1).all()
    # S2M's padded output is shown as is: the hard mask keeps object 2 in the pad strip
    assert (proc.core.get_padded_mask(3)[rows, 79] == 2).all()


def test_mivos_protocol_commits_the_padding():
    s2m = SpyS2M()
    proc = make_processor("mivos", s2m)
    sc = scribble_dict(4, [stroke([(1.0, 0.2), (1.0, 0.8)], 1)])
    for _ in range(2):
        proc.step(sc)
    proc.step(sc)  # 3rd interaction: commit and propagate
    prob = proc.core._load_prob(4)
    rows = slice(int(0.3 * 47), int(0.7 * 47))
    assert (prob[1, rows, 79] > 0.99).all()  # object 1's probability lives in the padding


def test_corrected_protocol_keeps_the_padding_empty():
    s2m = SpyS2M()
    proc = make_processor("corrected", s2m)
    full = torch.zeros(3, 48, 80)
    full[1] = 1
    proc.core.update_mask_only(full, 3, padded=True)
    sc = scribble_dict(3, [stroke([(1.0, 0.2), (1.0, 0.8)], 2)])
    proc.step(sc)
    x1, x2 = s2m.inputs
    left, right, top, bottom = 5, 5, 4, 4
    # no label and no stroke in the padding
    for x in (x1, x2):
        assert x[0, 3:, :, :left].eq(0).all() and x[0, 3:, :, 80 - right:].eq(0).all()
        assert x[0, 3:, :top].eq(0).all() and x[0, 3:, 48 - bottom:].eq(0).all()
    # the stroke lands on the last image column (69 -> padded column 74) and is dilated to 73
    rows = slice(top + int(0.3 * 39), top + int(0.7 * 39))
    assert x2[0, 4, rows, 74].eq(1).all() and x2[0, 4, rows, 73].eq(1).all()
    # the existing mask is the image-size label map (object 1 inside the image only)
    assert x1[0, 3, top:48 - bottom, left:80 - right].eq(1).all()


def test_empty_scribble_rule_of_each_protocol():
    empty = {"scribbles": [[] for _ in range(T)], "sequence": "constructed"}
    sc = scribble_dict(2, [stroke([(0.3, 0.3), (0.4, 0.4)], 1)])

    s2m = SpyS2M()
    proc = make_processor("mivos", s2m)
    proc.step(sc)
    masks, nxt = proc.step(empty)
    assert nxt == [T - 1]  # the original falls through to the last frame
    assert len(s2m.inputs) == 4  # S2M ran there (two objects), with empty maps
    assert s2m.inputs[-1][0, 4:].eq(0).all()

    s2m = SpyS2M()
    proc = make_processor("corrected", s2m)
    proc.step(sc)
    before = proc.core.get_mask(2).copy()
    masks, nxt = proc.step(empty)
    assert nxt == [2] and len(s2m.inputs) == 2  # kept the scribbled frame, no S2M
    assert np.array_equal(proc.core.get_mask(2), before)


def test_empty_scribble_rule_set_on_its_own():
    empty = {"scribbles": [[] for _ in range(T)], "sequence": "constructed"}
    sc = scribble_dict(2, [stroke([(0.3, 0.3), (0.4, 0.4)], 1)])

    # mivos arithmetic with keep: the interaction stays on frame 2, S2M runs there on the
    # padded size with empty maps (mivos runs S2M on an empty scribble)
    s2m = SpyS2M()
    proc = make_processor("mivos", s2m, empty_scribble="keep")
    proc.step(sc)
    _, nxt = proc.step(empty)
    assert nxt == [2] and len(s2m.inputs) == 4
    assert s2m.inputs[-1].shape[-2:] == (48, 80) and s2m.inputs[-1][0, 4:].eq(0).all()

    # corrected arithmetic with last-frame: the original's rule
    s2m = SpyS2M()
    proc = make_processor("corrected", s2m, empty_scribble="last-frame")
    proc.step(sc)
    _, nxt = proc.step(empty)
    assert nxt == [T - 1]

    with pytest.raises(ValueError, match="empty_scribble"):
        make_processor("mivos", SpyS2M(), empty_scribble="first-frame")


def test_perfect_interaction_keeps_its_frame_and_propagates_from_it():
    # the ablation's oracle row: with the ground truth on frame 2 the robot's next scribbles
    # are empty; keep propagates from frame 2 after the 3rd interaction, so every frame gets the
    # object, while last-frame commits the last frame's ground truth and propagates from there
    empty = {"scribbles": [[] for _ in range(T)], "sequence": "constructed"}
    sc = scribble_dict(2, [stroke([(0.3, 0.3), (0.4, 0.4)], 1)])
    results = {}
    for rule in ("keep", "last-frame"):
        proc = make_processor("mivos", None, empty_scribble=rule, oracle=True)
        proc.gt[T - 1] = 0  # the objects have left the frame at the end
        proc.step(sc)
        proc.step(empty)
        masks, nxt = proc.step(empty)
        results[rule] = masks
        assert nxt is None  # propagated
    keep, last = results["keep"], results["last-frame"]
    assert np.array_equal(keep[2], proc.gt[2])
    assert (keep[T - 1] == 0).mean() < 1.0  # propagated from frame 2 to the end
    assert (last[T - 1] == 0).all()  # the last frame's (empty) ground truth was committed


def test_others_is_the_direct_sum_of_the_other_objects():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 1, 16, 16, generator=g)
    others = others_masks(masks)
    for i in range(4):
        rest = [j for j in range(4) if j != i]
        assert torch.equal(others[i], masks[rest].sum(0))
    # the shortcut total - self rounds differently: the rule is observable
    assert not torch.equal(others, masks.sum(0, keepdim=True) - masks)
    assert torch.equal(others_masks(masks[:1]), torch.zeros_like(masks[:1]))


def test_inference_core_memorises_with_the_direct_others(monkeypatch):
    proc = make_processor("mivos", SpyS2M(), k=3)
    seen = []
    encode = proc.core.prop_net.encode_memory

    def spy(image, mask, others=None):
        seen.append((mask.clone(), others.clone()))
        return encode(image, mask, others)

    monkeypatch.setattr(proc.core.prop_net, "encode_memory", spy)
    prob = torch.softmax(torch.randn(4, H, W, generator=torch.Generator().manual_seed(1)), 0)
    proc.core.interact(prob, 5)
    assert seen
    for mask, others in seen:
        assert torch.equal(others, others_masks(mask))


def test_memory_read_divides_the_query_keys():
    from model import memory

    q = torch.randn(1, 128, 500, generator=torch.Generator().manual_seed(0)) * 30  # CK of mivos
    ck = q.shape[1]
    assert torch.equal(memory.scale_query(q), q / math.sqrt(ck))
    # multiplying by 1/sqrt(CK) rounds differently for some elements
    assert not torch.equal(q / math.sqrt(ck), q * (1.0 / math.sqrt(ck)))
    mk = torch.randn(1, 128, 300, generator=torch.Generator().manual_seed(1)) * 30
    assert torch.equal(memory.affinity(mk, q),
                       torch.einsum("bcn,bcm->bnm", mk, q / math.sqrt(ck)))


def test_every_read_goes_through_the_division(monkeypatch):
    from model import memory

    calls = []
    real = memory.scale_query

    def spy(q):
        calls.append(q.shape)
        return real(q)

    monkeypatch.setattr(memory, "scale_query", spy)
    mk, mv, q = torch.randn(2, 8, 30), torch.randn(2, 4, 30), torch.randn(2, 8, 12)
    for kw in ({"top_k": None}, {"top_k": 5}, {"top_k": 5, "km_sigma": 1.0, "query_hw": (3, 4)}):
        calls.clear()
        memory.read_memory(mk, mv, q, **kw)
        assert calls, kw


@pytest.mark.parametrize("seed", [0, 1])
def test_driver_matches_the_original_protocol_after_six_interactions(seed):
    """Six interactions (frames 2 and 7, propagation with fusion after the 3rd and 6th) with
    strokes in the padding: every submitted mask equals the reference's."""
    from tests.reference_mivos import ReferenceDriver

    torch.manual_seed(seed)
    s2m = build_s2m("lite").eval()
    # top-k 10 < the 15 positions of one memory frame, so the top-k read is exercised
    proc = make_processor("mivos", s2m, k=2, fusion="diff", seed=seed, top_k=10)
    ref = ReferenceDriver(proc.core.prop_net, proc.core.fusion_net, s2m, proc.frames, 2, top_k=10)
    plan = [
        scribble_dict(2, [stroke([(0.1, 0.2), (0.4, 0.4)], 1), stroke([(0.6, 0.7), (1.0, 0.9)], 2)]),
        scribble_dict(2, [stroke([(0.0, 0.1), (0.0, 0.9)], 0)]),
        scribble_dict(2, [stroke([(0.2, 0.3), (0.3, 0.3)], 1)]),
        scribble_dict(7, [stroke([(0.7, 0.6), (0.9, 0.8)], 2), stroke([(1.0, 0.0), (1.0, 0.3)], 0)]),
        scribble_dict(7, [stroke([(0.2, 0.2), (0.35, 0.4)], 1)]),
        scribble_dict(7, [stroke([(0.5, 0.0), (0.5, 1.0)], 0)]),
    ]
    with torch.no_grad():
        for i, sc in enumerate(plan):
            ours, ours_next = proc.step(sc)
            theirs, their_next = ref.step(sc)
            assert ours_next == their_next, i
            assert np.array_equal(ours, theirs), (i, float((ours != theirs).mean()))
            # probabilities agree to rounding (the sparse readout sums in another order)
            assert (proc.core.prob.float() - ref.core.prob).abs().max() < 1e-5
    # the scenario is not trivial: propagation changed frames away from the scribbled ones
    assert len(np.unique(ours)) > 1
