"""The propagation / memory / fusion schedule of InferenceCore, through recording stub networks.

Each frame is a constant image whose value encodes its index, so the stubs can tell which frame
they are given; the stub memory keys carry the frame index too, so a read reveals which frames
are in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from inference.inference_core import InferenceConfig, InferenceCore
from util.tensor_util import IMAGENET_MEAN, IMAGENET_STD

H, W = 20, 28  # not multiples of 16: exercises padding


def frame_value(t: int) -> int:
    return 10 + 3 * t


def decode_frame(image: torch.Tensor) -> int:
    """Frame index from a padded, normalised image (any batch)."""
    v = image[0, 0, image.shape[-2] // 2, image.shape[-1] // 2].item()
    v = (v * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    return int(round((v - 10) / 3))


@dataclass
class StubQuery:
    key: torch.Tensor
    t: int


class RecordingProp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.reads: list[tuple[int, list[int]]] = []  # (query frame, memory frames)
        self.memorised: list[int] = []
        self.attention: list[int] = []

    def encode_query(self, image):
        t = decode_frame(image)
        h, w = image.shape[-2] // 16, image.shape[-1] // 16
        return StubQuery(key=torch.full((1, 1, h, w), float(t)), t=t)

    def encode_memory(self, image, mask, others):
        t = decode_frame(image)
        self.memorised.append(t)
        k = image.shape[0]
        h, w = image.shape[-2] // 16, image.shape[-1] // 16
        key = torch.full((k, 1, h, w), float(t))
        value = torch.nn.functional.avg_pool2d(mask, 16)
        return key, value

    def segment(self, query, mem_key, mem_value, top_k=None, memory_budget=None):
        hw = query.key.shape[-2] * query.key.shape[-1]
        frames = mem_key[0, 0].reshape(-1, hw)[:, 0].round().long().tolist()
        self.reads.append((query.t, frames))
        k = mem_key.shape[0]
        # object 1 grows with the frame index so that results differ between frames
        hh, ww = query.key.shape[-2] * 16, query.key.shape[-1] * 16
        logits = torch.full((k, 1, hh, ww), -2.0)
        logits[0] = 2.0
        return logits

    def attention_transfer(self, mem_key, query_key, diff, memory_budget=None):
        self.attention.append(int(query_key.flatten()[0].item()))
        return diff


class RecordingFusion(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, float, float]] = []

    def forward(self, image, prev, curr, attn, dist):
        t = decode_frame(image)
        self.calls.append((t, float(dist[0, 0]), float(dist[0, 1])))
        return torch.logit(curr.clamp(1e-4, 1 - 1e-4))


def make_core(t=30, k=2, **cfg):
    frames = np.stack([np.full((H, W, 3), frame_value(i), np.uint8) for i in range(t)])
    prop, fusion = RecordingProp(), RecordingFusion()
    core = InferenceCore(prop, fusion, frames, num_objects=k, config=InferenceConfig(**cfg))
    return core, prop, fusion


def label_map(k=2):
    m = np.zeros((H, W), np.int64)
    m[2:10, 3:12] = 1
    if k > 1:
        m[12:18, 15:25] = 2
    return m


def test_first_interaction_memory_schedule():
    core, prop, fusion = make_core(t=30)
    core.interact(label_map(), 12)
    reads = dict(prop.reads)
    # both passes cover every other frame once, forward first
    assert [q for q, _ in prop.reads] == list(range(13, 30)) + list(range(11, -1, -1))
    # forward: interacted frame always; every 5th frame from 12; the previous frame as temporary
    assert reads[13] == [12]
    assert reads[14] == [12, 13]
    assert reads[17] == [12, 16]
    assert reads[18] == [12, 17]  # 17 became permanent (17 - 12 >= 5), no temporary copy
    assert reads[19] == [12, 17, 18]
    assert reads[23] == [12, 17, 22]
    assert reads[29] == [12, 17, 22, 27, 28]
    # backward pass starts again from the permanent memory only (pass memory is discarded)
    assert reads[11] == [12]
    assert reads[6] == [12, 7]
    assert reads[0] == [12, 7, 2, 1]
    # the last frame of a pass is never memorised
    assert 29 not in prop.memorised and 0 not in prop.memorised
    # no earlier interaction: nothing is fused
    assert fusion.calls == [] and prop.attention == []


def test_passes_stop_at_interacted_frames_and_fuse_between():
    core, prop, fusion = make_core(t=30)
    core.interact(label_map(), 5)
    core.interact(label_map(), 20)
    prop.reads.clear()
    fusion.calls.clear()
    prop.memorised.clear()
    core.interact(label_map(), 12)
    queried = [q for q, _ in prop.reads]
    # forward from 12 stops before 20, backward stops before 5
    assert queried == list(range(13, 20)) + list(range(11, 5, -1))
    # both directions have an earlier interacted frame: every propagated frame is fused
    fused = {t: (nc, nr) for t, nc, nr in fusion.calls}
    assert sorted(fused) == list(range(6, 12)) + list(range(13, 20))
    for t, (n_c, n_r) in fused.items():
        t_c = 20 if t > 12 else 5
        assert n_c == pytest.approx(abs(t_c - t) / abs(t_c - 12))
        assert n_r == pytest.approx(abs(12 - t) / abs(t_c - 12))
        assert n_c + n_r == pytest.approx(1.0)
    # permanent memory holds every interacted frame, in interaction order
    assert dict(prop.reads)[13][:3] == [5, 20, 12]
    assert core.interacted == [5, 20, 12]


def test_fusion_only_on_side_with_earlier_interaction():
    core, prop, fusion = make_core(t=20)
    core.interact(label_map(), 4)
    fusion.calls.clear()
    core.interact(label_map(), 10)
    # forward from 10 reaches the end (no later interaction): plain overwrite;
    # backward stops at 4: frames 5..9 are fused
    assert sorted(t for t, _, _ in fusion.calls) == [5, 6, 7, 8, 9]


def test_linear_and_none_fusion_modes():
    def run(mode):
        core, prop, fusion = make_core(t=12, fusion=mode)
        m = label_map()
        core.interact(m, 0)
        first = [core.get_prob(t).clone() for t in range(12)]
        m2 = np.zeros_like(m)
        m2[0:6, 0:6] = 2
        core.interact(m2, 11)
        return core, first, fusion

    # none: the newest propagation overwrites, fusion net never called
    core, first, fusion = run("none")
    assert fusion.calls == []
    # linear: weights follow the temporal distance between t_c = 0 and t_r = 11
    core_l, first_l, _ = run("linear")
    core_n, _, _ = run("none")
    for t in range(1, 11):
        n_c, n_r = t / 11, (11 - t) / 11
        expected = n_r * first_l[t] + n_c * core_n.get_prob(t)
        assert torch.allclose(core_l.get_prob(t), expected, atol=1e-6)


def test_mem_every_and_no_temporary():
    core, prop, _ = make_core(t=12, mem_every=3, include_last=False)
    core.interact(label_map(), 0)
    reads = dict(prop.reads)
    assert reads[1] == [0]
    assert reads[2] == [0]  # previous frame not used as temporary memory
    assert reads[4] == [0, 3]
    assert reads[11] == [0, 3, 6, 9]


def test_update_mask_only_keeps_probabilities():
    core, prop, _ = make_core(t=8)
    core.interact(label_map(), 3)
    before = core.get_prob(5).clone()
    m = np.zeros((H, W), np.int64)
    m[:5, :5] = 2
    shown = core.update_mask_only(m, 5)
    assert (shown == m).all()
    assert torch.equal(core.get_prob(5), before)
    assert (core.get_mask(5) == m).all()


def test_progress_callback_counts_frames():
    core, _, _ = make_core(t=10)
    seen = []
    core.interact(label_map(), 4, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 9) for i in range(1, 10)]


def test_bad_inputs():
    core, _, _ = make_core(t=6, k=2)
    bad = label_map()
    bad[0, 0] = 5
    with pytest.raises(ValueError, match=r"unknown object ids \[5\]"):
        core.interact(bad, 1)
    with pytest.raises(ValueError, match="label map is"):
        core.interact(np.zeros((H + 1, W), np.int64), 1)
    with pytest.raises(IndexError, match="out of range"):
        core.interact(label_map(), 6)
    frames = [np.zeros((H, W, 3), np.uint8), np.zeros((H + 2, W, 3), np.uint8)]
    core2 = InferenceCore(RecordingProp(), RecordingFusion(), frames, num_objects=1)
    with pytest.raises(ValueError, match="same size"):
        core2.interact(np.zeros((H, W), np.int64), 0)
    with pytest.raises(ValueError, match="fusion"):
        InferenceConfig(fusion="average").validate()


# ---------------------------------------------------------------------------------------------
# one schedule: the interactive core and the semi-supervised driver share the engine
# ---------------------------------------------------------------------------------------------


def test_memory_write_rule():
    from inference.engine import PERMANENT, TEMPORARY, MemoryWriteRule

    rule = MemoryWriteRule(mem_every=3, include_last=True, start=10)
    got = [rule.decide(t, last=False) for t in range(11, 18)]
    assert got == [TEMPORARY, TEMPORARY, PERMANENT, TEMPORARY, TEMPORARY, PERMANENT, TEMPORARY]
    assert rule.decide(18, last=True) is None  # the last frame of a pass is never written
    back = MemoryWriteRule(mem_every=2, include_last=False, start=5)  # backward pass
    assert [back.decide(t, last=False) for t in (4, 3, 2, 1)] == [None, PERMANENT, None, PERMANENT]
    rule.restart(30)  # an annotated frame: the count starts again
    assert rule.decide(31, last=False) == TEMPORARY and rule.decide(33, last=False) == PERMANENT
    with pytest.raises(ValueError, match="mem_every"):
        MemoryWriteRule(mem_every=0, include_last=True, start=0)


def test_interactive_and_semi_supervised_use_the_same_write_rule(monkeypatch):
    import inspect

    import inference.engine as engine
    from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator

    callers = []
    original = engine.MemoryWriteRule.decide

    def spy(self, t, last):
        callers.append(inspect.stack()[1].frame.f_globals["__name__"])
        return original(self, t, last)

    monkeypatch.setattr(engine.MemoryWriteRule, "decide", spy)
    core, prop_i, _ = make_core(t=14)
    core.interact(label_map(), 0)
    assert set(callers) == {"inference.inference_core"} and len(callers) == 13
    callers.clear()
    frames = [np.full((H, W, 3), frame_value(i), np.uint8) for i in range(14)]
    prop_s = RecordingProp()
    list(SemiVOSPropagator(prop_s, SemiVOSConfig()).propagate(frames, {0: label_map()}, 2))
    assert set(callers) == {"inference.semi_vos"} and len(callers) == 13
    # the same schedule: a forward pass from frame 0 reads the same memory frames in both
    assert prop_s.reads == prop_i.reads
    assert prop_s.memorised == prop_i.memorised


def test_semi_supervised_write_rule_restarts_at_annotated_frames():
    from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator

    frames = [np.full((H, W, 3), frame_value(i), np.uint8) for i in range(14)]
    second = np.zeros((H, W), np.int64)
    second[12:18, 15:25] = 2
    prop = RecordingProp()
    cfg = SemiVOSConfig(mem_every=3, record_memory=True)
    out = list(SemiVOSPropagator(prop, cfg).propagate(frames, {0: label_map(1), 4: second}, 2))
    mem = {r.index: r.memory for r in out}
    # frame 3 is permanent (3 - 0 >= 3); frame 4 is annotated (permanent, restarts the count);
    # then 7 and 10 (counted from 4), the previous frame as temporary in between
    assert mem[5] == [([1], [0, 3, 4], None), ([2], [4], None)]
    assert mem[9] == [([1], [0, 3, 4, 7], 8), ([2], [4, 7], 8)]
    assert mem[13] == [([1], [0, 3, 4, 7, 10], 12), ([2], [4, 7, 10], 12)]
    assert 13 not in prop.memorised  # the last frame is never memorised


def test_permanent_memory_records_interacted_frames():
    core, _, _ = make_core(t=30)
    for idx in (5, 20, 12):
        core.interact(label_map(), idx)
    assert core.permanent.permanent_frames == [5, 20, 12]
    assert core.permanent.num_permanent == 3
