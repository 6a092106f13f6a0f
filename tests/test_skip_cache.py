"""Propagation without repeated work: the decoder's skip outputs cached with the query features
of a frame, memory reads that copy no values.

The skip branches depend only on the frame, so the engine computes them the first time a frame
is segmented and keeps them in the frame's cache entry (in place of f8 / f4); later passes over
the frame (fusion passes, later interactions, several memory banks) decode without running the
skip convolutions again. The memory bank's values are read as views (MiVOS: object by object;
STCN: all objects' values as one block of rows). Results are bit-identical to the plain paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.engine import PropagationEngine, _nbytes
from inference.inference_core import InferenceConfig, InferenceCore
from inference.memory_bank import MemoryBank
from model.memory import _value_rows
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


def filled_bank(shared_key: bool, k=3, frames=5, ck=8, cv=16, h=3, w=4, seed=0):
    """A bank of random entries (capacity larger than used: its rows are views of a buffer)."""
    gen = torch.Generator().manual_seed(seed)
    bank = MemoryBank(initial_capacity=frames + 3, shared_key=shared_key)
    for t in range(frames):
        key = torch.randn(1 if shared_key else k, ck, h, w, generator=gen)
        bank.add_permanent(key, torch.randn(k, cv, h, w, generator=gen), t)
    return bank


def rows_of_read(bank: MemoryBank) -> torch.Tensor:
    """The value rows a top-k read of ``bank`` gathers from, as the read forms them
    (MiVOS: each object's N x CV rows at its own offset in the buffer; STCN: the objects
    stacked along the channels, N x (K*CV)), without asking for a copy."""
    _, values = bank.read_tensors()  # K x CV x N
    if bank.shared_key:
        stacked = values.unsqueeze(0).flatten(start_dim=3).reshape(1, -1, values.shape[2])
        return stacked.transpose(1, 2).reshape(-1, stacked.shape[1])
    rows, step = _value_rows(values)
    assert step == bank._values.shape[1]  # each object's rows where they lie in the buffer
    return rows


def test_per_object_bank_values_are_read_in_place():
    """Per-object values have room for more frames; the top-k read gathers each object's rows
    where they lie in the buffer (it copies nothing) through a pass's writes, and every entry
    keeps its content."""
    gen = torch.Generator().manual_seed(0)
    bank = filled_bank(shared_key=False)  # 5 permanent frames, 3 objects
    entries = [bank.frame_tensors(i) for i in range(5)]
    entries = [(k.clone(), v.clone()) for k, v in entries]

    def check():
        rows = rows_of_read(bank)
        assert rows.data_ptr() == bank._values.data_ptr()  # a view of the buffer
        for i, (k, v) in enumerate(entries):
            got_k, got_v = bank.frame_tensors(i)
            assert torch.equal(got_k, k) and torch.equal(got_v, v)

    check()
    pass_bank = bank.copy()
    for t in range(5, 13):  # a pass: the previous frame as temporary, every 5th permanent
        key = torch.randn(3, 8, 3, 4, generator=gen)
        value = torch.randn(3, 16, 3, 4, generator=gen)
        if t % 5 == 0:
            pass_bank.add_permanent(key, value, t)
        else:
            pass_bank.set_temporary(key, value, t)
        rows = rows_of_read(pass_bank)
        assert rows.data_ptr() == pass_bank._values.data_ptr()
        assert torch.equal(pass_bank.frame_tensors(pass_bank.num_frames - 1)[1], value)
    check()  # the copy left the original alone
    new = torch.randn(2, 16, 5, 3, 4, generator=gen)
    bank.add_objects(torch.randn(2, 8, 5, 3, 4, generator=gen), new)
    assert rows_of_read(bank).data_ptr() == bank._values.data_ptr()
    for i, (_, v) in enumerate(entries):
        assert torch.equal(bank.frame_tensors(i)[1][:3], v)
        assert torch.equal(bank.frame_tensors(i)[1][3:], new[:, :, i])


def test_stcn_bank_values_are_one_block_of_rows():
    """Shared-key banks lay values out position-major (N x K x CV): the network's stacked
    (K*CV) x N view of all objects is a view, and add_objects / copy / frame_tensors keep the
    entries."""
    bank = filled_bank(shared_key=True)
    rows = rows_of_read(bank)
    assert rows.shape == (5 * 12, 3 * 16) and rows.data_ptr() == bank._values.data_ptr()
    before = [bank.frame_tensors(i)[1].clone() for i in range(5)]
    copy = bank.copy()
    gen = torch.Generator().manual_seed(1)
    new = torch.randn(2, 16, 5, 3, 4, generator=gen)
    bank.add_objects(torch.zeros(2, 8, 5, 3, 4), new)
    assert bank.num_objects == 5 and copy.num_objects == 3
    for i in range(5):
        assert torch.equal(bank.frame_tensors(i)[1][:3], before[i])
        assert torch.equal(bank.frame_tensors(i)[1][3:], new[:, :, i])
        assert torch.equal(copy.frame_tensors(i)[1], before[i])
    # growing past the capacity keeps the entries too
    for t in range(5, 12):
        bank.add_permanent(torch.randn(1, 8, 3, 4, generator=gen),
                           torch.full((5, 16, 3, 4), float(t)), t)
    assert bank.num_frames == 12
    assert torch.equal(bank.frame_tensors(2)[1][:3], before[2])
    assert bank.frame_tensors(11)[1].unique().tolist() == [11.0]


def test_channels_last_encoders_are_an_option(nets):
    """channels_last=True converts the image encoders in place (an option: it rounds
    differently); the default leaves the network alone."""
    import copy

    prop, _ = nets
    net = copy.deepcopy(prop)
    frames = video(3)
    PropagationEngine(net, (H, W), frames=frames)
    names = ("rgb_encoder", "mask_rgb_encoder") if net.arch == "mivos" else (
        "key_encoder", "value_encoder")
    conv = getattr(net, names[0]).conv1.weight
    assert conv.is_contiguous()  # default: untouched
    engine = PropagationEngine(net, (H, W), frames=frames, channels_last=True)
    for name in names:
        weight = getattr(net, name).conv1.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and weight.shape[1] > 1
    plain = PropagationEngine(prop, (H, W), frames=frames)
    prob = torch.zeros(3, plain.ph, plain.pw)
    prob[1, :16], prob[2, 16:32] = 1.0, 1.0
    prob[0] = 1 - prob[1:].sum(0)
    with torch.inference_mode():
        results = []
        for e in (plain, engine):
            bank = e.new_bank()
            e.memorise(0, prob, [bank], "permanent")
            results.append(e.segment(1, [bank]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-3)
