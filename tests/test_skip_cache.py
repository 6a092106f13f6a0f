"""The decoder's skip-branch outputs are cached with the query features of a frame.

They depend only on the frame, so the engine computes them the first time a frame is segmented
and keeps them in the frame's cache entry (in place of f8 / f4); later passes over the frame
(fusion passes, later interactions, several memory banks) decode without running the skip
convolutions again. Results are bit-identical to decoding without the cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engine import PropagationEngine, _nbytes
from inference.inference_core import InferenceConfig, InferenceCore
from model.presets import build_fusion, build_propagation

H, W = 40, 56  # not multiples of 16
T = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs: one torch thread (avoids OpenMP spinning on a busy, shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["mivos", "stcn"])
def nets(request):
    torch.manual_seed(0)
    prop = build_propagation("lite", arch=request.param).eval()
    fusion = build_fusion("lite").eval()
    return prop, fusion


def video(t=T, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    frames = []
    for i in range(t):
        f = np.roll(base, shift=i, axis=1).copy()
        f[10 + i:20 + i, 8:22] = (200, 40, 40)
        frames.append(f)
    return np.stack(frames)


def mask(k=2, shift=0):
    m = np.zeros((H, W), np.int64)
    m[10:20, 8 + shift:22 + shift] = 1
    if k > 1:
        m[25:35, 30:50] = 2
    return m


def skip_convs(net):
    """The decoder's skip-branch convolutions on f8 and on f4 (the first of each branch)."""
    blocks = (net.decoder.up_16_8, net.decoder.up_8_4)
    return [getattr(b, "skip_conv1", None) or b.skip_conv for b in blocks]


class SkipCounter:
    """Counts, per query frame, the calls of the skip convolutions (forward hooks)."""

    def __init__(self, net):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in skip_convs(net)]

    def _hook(self, module, inputs, output):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def no_skip_cache(core):
    """Make a core's engine decode every frame from f8 / f4 (the path without the cache)."""
    core.engine.adapter._with_skips = None
    return core


def session(nets, cache: bool, **cfg):
    """Three interactions with difference-aware fusion; returns the core and the skip-conv calls
    of each interaction."""
    prop, fusion = nets
    config = InferenceConfig.for_arch(prop.arch, **cfg)
    core = InferenceCore(prop, fusion, video(), num_objects=2, config=config)
    if not cache:
        no_skip_cache(core)
    counter = SkipCounter(prop)
    calls = []
    try:
        for idx, shift in ((2, 0), (6, 3), (4, 1)):
            before = counter.calls
            core.interact(mask(shift=shift), idx)
            calls.append(counter.calls - before)
    finally:
        counter.remove()
    return core, calls


def test_cached_skips_give_bit_identical_results(nets):
    cached, _ = session(nets, cache=True)
    plain, _ = session(nets, cache=False)
    assert np.array_equal(cached.masks, plain.masks)
    assert torch.equal(cached.prob, plain.prob)


def test_skip_convolutions_run_once_per_frame_across_passes(nets):
    core, calls = session(nets, cache=True)
    # first interaction (frame 2): frames 3..7 and 1..0 are segmented, each once; two skip
    # branches per frame
    assert calls[0] == 2 * (T - 1)
    # the later interactions segment frames already decoded: no skip convolution runs again
    assert calls[1:] == [0, 0]
    # without the cache every segmented frame runs them again
    _, plain_calls = session(nets, cache=False)
    # interaction on 6: frames 7 and 5, 4, 3; on 4: frames 5 and 3
    assert plain_calls == [2 * (T - 1), 2 * 4, 2 * 2]


def test_a_frame_decoded_from_several_banks_runs_the_skip_branches_once(nets):
    """Several object groups (memory banks, as the semi-supervised driver keeps them) read for
    one frame share its skip outputs."""
    prop, _ = nets
    frames = video(3)

    def engine_with_banks(cache: bool):
        engine = PropagationEngine(prop, (H, W), frames=frames, feature_cache_mb=0.0, top_k=20)
        if not cache:
            engine.adapter._with_skips = None
        prob = torch.zeros(4, engine.ph, engine.pw)
        prob[1, :16], prob[2, 16:32], prob[3, 32:] = 1.0, 1.0, 1.0
        prob[0] = 1 - prob[1:].sum(0)
        banks = [engine.new_bank(num_objects=1), engine.new_bank(num_objects=2)]
        engine.memorise(0, prob, banks, "permanent")
        return engine, banks

    with torch.inference_mode():
        engine, banks = engine_with_banks(cache=True)
        counter = SkipCounter(prop)
        try:
            out = engine.segment(1, banks)
            again = engine.segment(1, banks)
        finally:
            counter.remove()
        assert counter.calls == 2  # one call per skip branch for the frame
        assert torch.equal(out, again)
        plain, plain_banks = engine_with_banks(cache=False)
        counter = SkipCounter(prop)
        try:
            assert torch.equal(plain.segment(1, plain_banks), out)
        finally:
            counter.remove()
        assert counter.calls == 2 * len(banks)  # without the cache: once per bank


def test_cache_entries_hold_the_skips_and_count_their_bytes(nets):
    core, _ = session(nets, cache=True)
    engine = core.engine
    # every frame fits the default budget; frame 2 (the first interaction) is never segmented,
    # and only STCN encodes it (its memory key is the query key)
    segmented = [t for t in range(T) if t != 2]
    expected = range(T) if engine.adapter.shared_key else segmented
    assert sorted(engine._features) == list(expected)
    for t, feats in engine._features.items():
        if t in segmented:
            assert feats.skips is not None and feats.f8 is None and feats.f4 is None
        else:
            assert feats.skips is None and feats.f8 is not None
    held = list(engine._features.values())
    assert engine._feature_bytes == sum(_nbytes(f) for f in held)
    first = engine._features[segmented[0]]
    skip_bytes = sum(s.numel() * s.element_size() for s in first.skips)
    assert skip_bytes > 0 and _nbytes(first) > skip_bytes


def test_bounded_cache_stays_within_its_budget_with_the_skips(nets):
    prop, _ = nets
    probe = PropagationEngine(prop, (H, W), frames=video(1))
    with torch.inference_mode():
        encoded = _nbytes(probe.query_features(0))
        entry = _nbytes(probe.decoder_features(0))
    # the skip outputs replace f8 / f4: the lite decoder's widths keep the entry's size
    assert entry == encoded
    budget_mb = 2.5 * entry / 2**20  # two frames and a half
    core, calls = session(nets, cache=True, feature_cache_mb=budget_mb)
    engine = core.engine
    assert engine._feature_bytes <= budget_mb * 2**20
    assert engine._feature_bytes == sum(_nbytes(f) for f in engine._features.values())
    assert len(engine._features) == 2
    assert calls[1] > 0  # evicted frames are encoded and decoded again
    plain, _ = session(nets, cache=False)
    assert torch.equal(core.prob, plain.prob)
