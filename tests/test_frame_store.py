"""Results kept in a file (``result_storage="disk"``): the file store itself, and an
InferenceCore using it gives exactly the results of one keeping them in memory."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gui.core_state import PropagationSnapshot
from inference.frame_store import CroppedFrames, DiskFrames
from inference.inference_core import InferenceConfig, InferenceCore
from model.presets import build_fusion, build_propagation
from tests.test_inference_core import first_mask, video


def test_disk_frames_round_trip_and_initial(tmp_path):
    initial = np.full((2, 3, 4), 7, np.float16)
    store = DiskFrames(5, (2, 3, 4), np.float16, initial=initial, directory=tmp_path)
    assert os.listdir(tmp_path) == []  # unlinked at once: nothing left behind, even on a crash
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 3, 4)), rng.random((2, 3, 4))
    store.write(3, a)
    store[1] = b
    assert np.array_equal(store[3], a.astype(np.float16))
    assert np.array_equal(store.read(1), b.astype(np.float16))
    assert np.array_equal(store[0], initial) and np.array_equal(store[-1], initial)
    assert store.written_frames() == [1, 3]
    block = store[1:4]
    assert block.shape == (3, 2, 3, 4) and np.array_equal(block[1], initial)
    block[1] = 1.5
    store[1:4] = block
    assert np.array_equal(store[2], np.full((2, 3, 4), 1.5, np.float16))
    assert np.array_equal(np.asarray(store)[3], a.astype(np.float16))
    # a read is a copy: changing it does not change the store
    r = store[3]
    r[...] = 0
    assert np.array_equal(store[3], a.astype(np.float16))
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.write(0, a)


def test_disk_frames_errors(tmp_path):
    store = DiskFrames(3, (4, 4), np.uint8, directory=tmp_path)
    with pytest.raises(ValueError, match=r"frame 1: expected shape \(4, 4\), got \(4, 5\)"):
        store[1] = np.zeros((4, 5))
    with pytest.raises(IndexError, match="frame 3 out of range"):
        store.read(3)
    with pytest.raises(IndexError, match="step 1"):
        store[::2]
    with pytest.raises(ValueError, match="shape"):
        store[0:2] = np.zeros((3, 4, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiskFrames(3, (4, 4), np.uint8, directory=tmp_path / "missing")


def test_cropped_frames_write_keeps_the_padding(tmp_path):
    store = DiskFrames(2, (6, 8), np.uint8, initial=np.full((6, 8), 9, np.uint8),
                       directory=tmp_path)
    crop = CroppedFrames(store, 1, 2, 4, 5)
    assert crop.shape == (2, 4, 5) and len(crop) == 2
    crop[0] = np.arange(20).reshape(4, 5)
    full = store[0]
    assert np.array_equal(full[1:5, 2:7], np.arange(20).reshape(4, 5))
    assert (full[0] == 9).all() and (full[:, :2] == 9).all()
    assert np.array_equal(crop[0], np.arange(20).reshape(4, 5))
    assert [f.shape for f in crop] == [(4, 5), (4, 5)]


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return build_propagation("lite").eval(), build_fusion("lite").eval()


def _run(nets, k=2, **cfg):
    prop, fusion = nets
    core = InferenceCore(prop, fusion, video(), num_objects=k, config=InferenceConfig(**cfg))
    core.interact(first_mask(k), 2)
    m2 = first_mask(k)
    m2[:, :4] = 1
    core.interact(m2, 6)  # the backward pass fuses with the first round's results
    return core


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_core_on_disk_gives_identical_results(nets, tmp_path, dtype):
    ref = _run(nets, prob_dtype=dtype)
    disk = _run(nets, prob_dtype=dtype, result_storage="disk", result_dir=str(tmp_path))
    assert isinstance(disk.padded_masks, DiskFrames)
    assert np.array_equal(np.asarray(disk.masks), ref.masks)
    assert np.array_equal(disk.padded_masks[:], ref.padded_masks)
    for t in range(8):
        assert torch.equal(disk.raw_prob(t), ref.prob[:, t])
        assert torch.equal(disk.get_prob(t), ref.get_prob(t))
        assert np.array_equal(disk.get_mask(t), ref.get_mask(t))
    with pytest.raises(AttributeError, match="raw_prob"):
        _ = disk.prob
    assert os.listdir(tmp_path) == []


def test_core_on_disk_add_objects(nets, tmp_path):
    prop, fusion = nets
    cores = []
    for cfg in ({}, {"result_storage": "disk", "result_dir": str(tmp_path)}):
        core = InferenceCore(prop, fusion, video(), num_objects=1,
                             config=InferenceConfig(prob_dtype="uint8", **cfg))
        core.interact(first_mask(1), 0)
        assert core.add_objects(1) == 2
        core.interact(first_mask(2), 4)
        cores.append(core)
    ref, disk = cores
    assert disk.raw_prob(1).shape[0] == 3
    for t in range(8):
        assert torch.equal(disk.raw_prob(t), ref.prob[:, t])
    assert np.array_equal(np.asarray(disk.masks), ref.masks)


def test_snapshot_restores_a_core_on_disk(nets, tmp_path):
    core = _run(nets, prob_dtype="uint8", result_storage="disk", result_dir=str(tmp_path))
    before = [core.raw_prob(t).clone() for t in range(8)]
    before_masks = np.asarray(core.masks)
    snap = PropagationSnapshot.take(core, 4)
    m3 = first_mask(2)
    m3[30:, :] = 2
    core.interact(m3, 4)
    assert not np.array_equal(np.asarray(core.masks), before_masks)
    snap.restore(core)
    assert np.array_equal(np.asarray(core.masks), before_masks)
    assert all(torch.equal(core.raw_prob(t), before[t]) for t in range(8))
    assert core.interacted == [2, 6]


def test_unknown_result_storage_is_refused():
    with pytest.raises(ValueError, match="result_storage must be one of"):
        InferenceConfig(result_storage="ssd").validate()
