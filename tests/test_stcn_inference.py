"""STCN in the inference engine: the MiVOS-STCN interactive schedule, STCN's semi-supervised
schedule, one key bank shared by the objects, fusion from the shared keys, and --arch stcn in
both evaluation scripts and the benchmark.

The schedule tests use a recording stub with the STCN interface (its keys carry the frame index,
as in tests/test_inference_schedule.py); the end-to-end tests run the lite STCN network with
random weights at small sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dataset.synthetic import SequenceSpec, write_dataset
from inference.arch import ARCH_DEFAULTS, StcnAdapter, adapter_for
from inference.engine import PERMANENT, TEMPORARY, MemoryWriteRule
from inference.inference_core import InferenceConfig, InferenceCore
from inference.memory_bank import MemoryBank
from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator
from model.aggregate import aggregate
from model.presets import build_propagation
from tests.test_inference_schedule import (
    H,
    RecordingFusion,
    RecordingProp,
    W,
    decode_frame,
    frame_value,
    label_map,
)
from util.tensor_util import normalize_image, pad_divide_by


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one torch thread (avoids OpenMP spinning on a busy, shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# a recording network with the STCN interface
# ---------------------------------------------------------------------------------------------


@dataclass
class StubFeatures:
    key: torch.Tensor  # 1 x 1 x h x w, the frame index
    value: torch.Tensor
    f16: torch.Tensor
    f8: torch.Tensor
    f4: torch.Tensor


class RecordingSTCN(torch.nn.Module):
    """Keys hold the frame index; reads report the memory frames, the key batch and the objects."""

    arch = "stcn"

    def __init__(self):
        super().__init__()
        self.key_encoded: list[int] = []  # frames given to the key encoder
        self.value_encoded: list[tuple[int, int]] = []  # (frame, objects) of value encodings
        self.reads: list[tuple[int, list[int]]] = []  # (query frame, memory frames)
        self.read_shapes: list[tuple[int, int]] = []  # (key batch, value objects) of each read
        self.attention: list[tuple[int, int, int]] = []  # (memory frame, query frame, channels)

    def encode_key(self, image):
        t = decode_frame(image)
        self.key_encoded.append(t)
        h, w = image.shape[-2] // 16, image.shape[-1] // 16
        full = torch.full((1, 1, h, w), float(t))
        return StubFeatures(key=full, value=full, f16=full.clone(), f8=full, f4=full)

    def encode_value(self, image, f16, masks, others=None):
        t = decode_frame(image)
        assert int(f16.flatten()[0]) == t  # the cached f16 of the same frame
        assert masks.shape[0] == 1 and others is not None and others.shape == masks.shape
        self.value_encoded.append((t, masks.shape[1]))
        return torch.nn.functional.avg_pool2d(masks, 16).unsqueeze(2)  # 1 x K x 1 x h x w

    def segment(self, query, mem_key, mem_value, top_k=None, memory_budget=None):
        assert mem_key.dim() == 3 and mem_value.dim() == 4  # 1 x CK x N, 1 x K x CV x N
        hw = query.key.shape[-2] * query.key.shape[-1]
        frames = mem_key[0, 0].reshape(-1, hw)[:, 0].round().long().tolist()
        t = int(query.key.flatten()[0])
        self.reads.append((t, frames))
        self.read_shapes.append((mem_key.shape[0], mem_value.shape[1]))
        k = mem_value.shape[1]
        hh, ww = query.key.shape[-2] * 16, query.key.shape[-1] * 16
        logits = torch.full((1, k, hh, ww), -2.0)
        logits[0, 0] = 2.0
        return logits

    def attention_transfer(self, mem_key, query_key, diff, memory_budget=None):
        self.attention.append((int(mem_key.flatten()[0]), int(query_key.flatten()[0]),
                               diff.shape[1]))
        return diff


def stub_core(t=30, k=2, **cfg):
    frames = np.stack([np.full((H, W, 3), frame_value(i), np.uint8) for i in range(t)])
    prop, fusion = RecordingSTCN(), RecordingFusion()
    config = InferenceConfig.for_arch("stcn", **cfg) if cfg else None
    core = InferenceCore(prop, fusion, frames, num_objects=k, config=config)
    return core, prop, fusion


# ---------------------------------------------------------------------------------------------
# the MiVOS-STCN interactive schedule
# ---------------------------------------------------------------------------------------------


def test_stcn_defaults_follow_the_architecture():
    assert InferenceConfig.for_arch("stcn").top_k == 20 == ARCH_DEFAULTS["stcn"].top_k
    assert InferenceConfig.for_arch("stcn").include_last is False
    assert InferenceConfig.for_arch("mivos") == InferenceConfig()
    assert InferenceConfig.for_arch("stcn", top_k=7).top_k == 7
    core, _, _ = stub_core()
    assert core.config.arch == "stcn" and core.config.top_k == 20  # no config: the net's arch
    assert isinstance(core.engine.adapter, StcnAdapter)
    assert adapter_for(RecordingProp()).arch == "mivos"  # a network without ``arch``
    frames = np.zeros((3, H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="arch 'mivos' but the propagation network is 'stcn'"):
        InferenceCore(RecordingSTCN(), None, frames, 1, InferenceConfig(fusion="none"))
    with pytest.raises(ValueError, match="arch 'stcn' but the propagation network is 'mivos'"):
        InferenceCore(RecordingProp(), None, frames, 1,
                      InferenceConfig.for_arch("stcn", fusion="none"))


def test_stcn_interactive_memory_schedule():
    core, prop, fusion = stub_core(t=30)
    core.interact(label_map(), 12)
    reads = dict(prop.reads)
    assert [q for q, _ in prop.reads] == list(range(13, 30)) + list(range(11, -1, -1))
    # permanent every 5 frames from the interacted frame, no temporary previous frame
    assert reads[13] == [12] and reads[14] == [12] and reads[17] == [12]
    assert reads[18] == [12, 17]
    assert reads[22] == [12, 17] and reads[23] == [12, 17, 22]
    assert reads[29] == [12, 17, 22, 27]
    assert reads[11] == [12] and reads[7] == [12] and reads[6] == [12, 7]
    assert reads[0] == [12, 7, 2]
    # only the interacted frame and the permanent frames are value-encoded (all objects at once);
    # the last frame of a pass never
    assert prop.value_encoded == [(12, 2), (17, 2), (22, 2), (27, 2), (7, 2), (2, 2)]
    # the key encoder ran once per frame: memorising reuses the frame's query key
    assert sorted(prop.key_encoded) == list(range(30))
    assert fusion.calls == [] and prop.attention == []


def test_stcn_mem_every_counts_from_the_interacted_frame():
    core, prop, _ = stub_core(t=12, mem_every=3)
    core.interact(label_map(), 1)
    reads = dict(prop.reads)
    assert reads[2] == [1] and reads[4] == [1] and reads[5] == [1, 4]
    assert reads[11] == [1, 4, 7, 10]
    assert reads[0] == [1]
    # include_last on request (STCN's --include_last)
    core, prop, _ = stub_core(t=8, include_last=True)
    core.interact(label_map(), 0)
    assert dict(prop.reads)[3] == [0, 2]


def test_one_key_bank_shared_by_the_objects():
    core, prop, _ = stub_core(t=12, k=3)
    core.interact(label_map(), 0)
    assert set(prop.read_shapes) == {(1, 3)}  # one key row, three objects, one read per frame
    bank = core.permanent
    assert isinstance(bank, MemoryBank) and bank.shared_key
    key, value = bank.read_tensors()
    assert key.shape[0] == 1 and value.shape[0] == 3
    # a new object grows only the values
    core.add_objects(1)
    key2, value2 = core.permanent.read_tensors()
    assert key2.shape == key.shape and value2.shape[0] == 4
    assert torch.equal(key2, key) and torch.equal(value2[:3], value)
    prop.reads.clear()
    m = label_map()
    m[0:2, 0:2] = 4
    core.interact(m, 6)
    assert set(prop.read_shapes[-5:]) == {(1, 4)}


def test_shared_key_bank_layout():
    bank = MemoryBank(shared_key=True)
    for t in range(3):
        bank.add_permanent(torch.full((1, 2, 2, 3), float(t)), torch.full((4, 5, 2, 3), 10.0 + t), t)
    bank.set_temporary(torch.full((1, 2, 2, 3), 9.0), torch.full((4, 5, 2, 3), 19.0), 9)
    key, value = bank.read_tensors()
    assert key.shape == (1, 2, 4 * 6) and value.shape == (4, 5, 4 * 6)
    assert key[0, 0, ::6].tolist() == [0.0, 1.0, 2.0, 9.0]
    copy = bank.copy()
    assert copy.shared_key and copy.num_frames == 3 and copy.num_objects == 4
    with pytest.raises(ValueError, match="shared keys needs 1"):
        bank.add_permanent(torch.zeros(4, 2, 2, 3), torch.zeros(4, 5, 2, 3))
    k, v = bank.frame_tensors(1)
    assert k.shape == (1, 2, 2, 3) and v.shape == (4, 5, 2, 3) and k.unique().item() == 1.0


def test_stcn_fusion_from_the_shared_keys():
    core, prop, fusion = stub_core(t=30, k=2)
    core.interact(label_map(), 5)
    core.interact(label_map(), 20)
    prop.attention.clear()
    fusion.calls.clear()
    core.interact(label_map(), 12)
    fused = sorted(t for t, _, _ in fusion.calls)
    assert fused == list(range(6, 12)) + list(range(13, 20))
    # one attention product per fused frame: the interacted frame's (query) key against the
    # target frame's key, the difference maps of all objects stacked (2 x K channels)
    assert sorted(prop.attention) == [(12, t, 4) for t in fused]


# ---------------------------------------------------------------------------------------------
# STCN's semi-supervised schedule (REFERENCE.md j.1)
# ---------------------------------------------------------------------------------------------


def test_memory_write_rule_absolute_anchor():
    rule = MemoryWriteRule(mem_every=5, include_last=False, start=3, anchor="zero")
    got = {t: rule.decide(t, last=False) for t in range(4, 16)}
    assert [t for t, k in got.items() if k == PERMANENT] == [5, 10, 15]
    assert TEMPORARY not in got.values()
    rule.restart(7)  # an annotated frame does not move the absolute count
    assert rule.decide(8, last=False) is None and rule.decide(20, last=False) == PERMANENT
    assert rule.decide(25, last=True) is None
    with pytest.raises(ValueError, match="anchor"):
        MemoryWriteRule(5, False, 0, anchor="first")


def test_stcn_semi_supervised_schedule():
    frames = [np.full((H, W, 3), frame_value(i), np.uint8) for i in range(14)]
    second = np.zeros((H, W), np.int64)
    second[12:18, 15:25] = 2
    prop = RecordingSTCN()
    cfg = SemiVOSConfig.for_arch("stcn", record_memory=True)
    assert (cfg.top_k, cfg.include_last, cfg.mem_anchor) == (20, False, "zero")
    out = list(SemiVOSPropagator(prop, cfg).propagate(frames, {3: label_map(1), 7: second}, 2))
    mem = {r.index: r.memory for r in out}
    # frames whose absolute index is a multiple of 5 (not 8 = 3 + 5), annotated frames, no
    # temporary memory; object 2 has its own group from frame 7 on
    assert mem[4] == [([1], [3], None)]
    assert mem[6] == [([1], [3, 5], None)]
    assert mem[9] == [([1], [3, 5, 7], None), ([2], [7], None)]
    assert mem[13] == [([1], [3, 5, 7, 10], None), ([2], [7, 10], None)]
    # one value encoding per memorised frame for all enabled objects, split over the groups
    assert prop.value_encoded == [(3, 1), (5, 1), (7, 2), (10, 2)]
    assert sorted(set(prop.key_encoded)) == list(range(3, 14))
    assert prop.key_encoded.count(5) == 1  # memorising reused the query key
    with pytest.raises(ValueError, match="arch 'mivos' but the propagation network is 'stcn'"):
        SemiVOSPropagator(RecordingSTCN(), SemiVOSConfig())
    with pytest.raises(ValueError, match="km_sigma"):
        SemiVOSConfig.for_arch("stcn", km_sigma=5.6).validate()


# ---------------------------------------------------------------------------------------------
# the lite STCN network end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stcn_lite():
    torch.manual_seed(0)
    return build_propagation("lite", arch="stcn").eval()


def _video(n=6, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w + 3 * n, 3), dtype=np.uint8)
    return np.stack([base[:, 3 * i: 3 * i + w] for i in range(n)])


def _labels(h=40, w=56):
    m = np.zeros((h, w), np.int64)
    m[5:20, 6:25] = 1
    m[22:36, 30:50] = 2
    return m


def test_stcn_core_matches_direct_network_calls(stcn_lite):
    """Frame 1 after an interaction on frame 0 reads exactly frame 0: the engine's result is
    the network's segment on one shared key and per-object values."""
    frames = _video()
    core = InferenceCore(stcn_lite, None, frames, 2, InferenceConfig.for_arch("stcn", fusion="none"))
    core.interact(_labels(), 0)
    with torch.inference_mode():
        def image(t):
            x = torch.from_numpy(frames[t]).permute(2, 0, 1).float() / 255
            return pad_divide_by(normalize_image(x).unsqueeze(0), 16)[0]

        f0, f1 = stcn_lite.encode_key(image(0)), stcn_lite.encode_key(image(1))
        prob0 = pad_divide_by(torch.nn.functional.one_hot(torch.from_numpy(_labels()), 3)
                              .permute(2, 0, 1).float(), 16)[0]
        values = stcn_lite.encode_value(image(0), f0.f16, prob0[1:].unsqueeze(0))
        logits = stcn_lite.segment(f1, f0.key.unsqueeze(2), values.unsqueeze(3), top_k=20)
        expected = aggregate(torch.sigmoid(logits[0]), dim=0)
    torch.testing.assert_close(core._load_prob(1), expected, rtol=1e-5, atol=1e-6)


def test_stcn_segment_objects_share_one_frame(stcn_lite):
    """K objects read with one affinity and decoded with shared skip branches give each
    object's own single-object result."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        feats = stcn_lite.encode_key(torch.randn(1, 3, 48, 64, generator=gen))
        keys = torch.randn(1, 64, 2, 3, 4, generator=gen)
        values = torch.randn(1, 3, stcn_lite.value_dim, 2, 3, 4, generator=gen)
        together = stcn_lite.segment(feats, keys, values, top_k=5)
        alone = torch.cat([stcn_lite.segment(feats, keys, values[:, i:i + 1], top_k=5)
                           for i in range(3)], dim=1)
    assert together.shape == (1, 3, 48, 64)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_stcn_interact_and_fuse_end_to_end(stcn_lite):
    from model.presets import build_fusion

    torch.manual_seed(1)
    fusion = build_fusion("lite").eval()
    frames = _video(n=8)
    core = InferenceCore(stcn_lite, fusion, frames, 2)
    assert core.config.arch == "stcn" and core.config.fusion == "diff"
    masks = core.interact(_labels(), 0)
    assert masks.shape == (8, 40, 56) and masks.dtype == np.uint8
    before = core.get_prob(3).clone()
    moved = np.roll(_labels(), 4, axis=1)
    core.interact(moved, 7)  # backward pass to frame 1, fused with the first round
    assert not torch.equal(core.get_prob(3), before)
    prob = core.get_prob(3)
    torch.testing.assert_close(prob.sum(0), torch.ones(40, 56), rtol=1e-4, atol=1e-4)
    assert (core.get_mask(7) == moved).all()
    # semi-supervised propagation with the same network
    out = list(SemiVOSPropagator(stcn_lite, None).propagate(list(frames), {0: _labels()}, 2))
    assert [r.index for r in out] == list(range(8))
    assert (out[0].labels == _labels()).all()


# ---------------------------------------------------------------------------------------------
# --arch stcn in the evaluation scripts and the benchmark
# ---------------------------------------------------------------------------------------------

SPECS = [SequenceSpec("syn-a", 7, 48, 64, 1, 1, "val"), SequenceSpec("syn-b", 6, 48, 64, 2, 1, "val")]


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis_stcn")
    write_dataset(root, "tiny", seed=3, specs=SPECS)
    return root


def test_cli_defaults_follow_arch():
    import eval_davis_interactive as edi
    import eval_semi_vos as esv

    p = edi.build_parser()
    base = ["--davis", "d", "--output", "o"]
    cfg = edi.eval_config(p.parse_args([*base, "--arch", "stcn"]))
    assert (cfg.inference.arch, cfg.inference.top_k, cfg.inference.include_last) == ("stcn", 20, False)
    cfg = edi.eval_config(p.parse_args([*base, "--arch", "stcn", "--top-k", "7", "--include-last"]))
    assert (cfg.inference.top_k, cfg.inference.include_last) == (7, True)
    cfg = edi.eval_config(p.parse_args([*base, "--restart", "--amp", "bf16", "--top-k", "none"]))
    assert cfg.inference == InferenceConfig(top_k=None, amp="bfloat16") and not cfg.resume
    args = p.parse_args([*base, "--arch", "stcn"])
    edi.resolve_weights(args)
    assert (args.prop_model, args.fusion_model) == ("saves/stcn.pth", "saves/fusion_stcn.pth")
    s = esv.build_parser()
    semi = esv.semi_config(s.parse_args(["--dataset", "davis2017", "--root", "r", "--output", "o",
                                         "--arch", "stcn", "--mem-every", "3"]))
    assert semi == SemiVOSConfig.for_arch("stcn", mem_every=3)
    help_text = p.format_help()
    assert "--arch {mivos,stcn}" in help_text and "mivos: 50, stcn: 20" in help_text


def test_eval_davis_interactive_stcn(davis_root, tmp_path, capsys):
    import eval_davis_interactive

    out = tmp_path / "out"
    argv = ["--davis", str(davis_root), "--output", str(out), "--preset", "lite",
            "--random-weights", "--device", "cpu", "--arch", "stcn", "--max-interactions", "6"]
    assert eval_davis_interactive.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["curve"]["J_AND_F"]) == 8  # (0, 0), six interactions, the final point
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["config"]["inference"]["arch"] == "stcn"
    assert fp["config"]["inference"]["top_k"] == 20
    # another architecture on the same output: exit 2 naming the setting
    capsys.readouterr()
    argv_mivos = [a for a in argv if a not in ("--arch", "stcn")]
    assert eval_davis_interactive.main(argv_mivos) == 2
    assert "config.inference.arch" in capsys.readouterr().err
    # without weights: the default names of the architecture
    code = eval_davis_interactive.main(["--davis", str(davis_root), "--output",
                                        str(tmp_path / "w"), "--arch", "stcn", "--oracle",
                                        "--device", "cpu"])
    assert code == 2
    assert "saves/stcn.pth" in capsys.readouterr().err


def test_eval_semi_vos_stcn(davis_root, tmp_path, capsys):
    import eval_semi_vos

    out = tmp_path / "semi"
    argv = ["--dataset", "davis2017", "--root", str(davis_root), "--output", str(out),
            "--preset", "lite", "--random-weights", "--device", "cpu", "--arch", "stcn",
            "--no-progress", "--writers", "0"]
    assert eval_semi_vos.main(argv) == 0
    fp = json.loads((out / "fingerprint.json").read_text())["config"]
    assert (fp["arch"], fp["top_k"], fp["include_last"], fp["mem_anchor"]) == ("stcn", 20, False,
                                                                               "zero")
    info = json.loads((out / "run_info.json").read_text())
    assert info["options"]["arch"] == "stcn" and info["options"]["top_k"] == 20
    assert (out / "syn-b" / "00005.png").is_file()
    capsys.readouterr()
    assert eval_semi_vos.main([a for a in argv if a not in ("--arch", "stcn")]) == 2
    assert "config.arch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # an argparse error
        eval_semi_vos.main([*argv, "--km-sigma", "5.6", "--output", str(tmp_path / "k")])
    assert exc.value.code == 2 and "km_sigma" in capsys.readouterr().err


def test_benchmark_architecture_rows():
    import benchmark

    s = {"e2e_frames": 3, "height": 32, "width": 48, "archs": ["mivos", "stcn"],
         "arch_objects": [1, 2], "warmup": 0, "arch_repeats": 1}
    rows = benchmark.arch_rows("lite", torch.device("cpu"), s, lambda msg: None)
    assert {(r["arch"], r["objects"]) for r in rows} == {(a, k) for a in s["archs"]
                                                         for k in (1, 2)}
    for r in rows:
        assert r["ms_per_frame"] > 0
        assert r["ms_per_frame_per_object"] == pytest.approx(r["ms_per_frame"] / r["objects"])
        assert r["top_k"] == ARCH_DEFAULTS[r["arch"]].top_k
    ratios = benchmark.arch_ratios(rows)
    assert [r["objects"] for r in ratios] == [1, 2, "marginal 1->2"]
    assert all(r["stcn_over_mivos"] is None or r["stcn_over_mivos"] > 0 for r in ratios)
    # a marginal cost that timing noise made negative gives no ratio
    noisy = [dict(r, ms_per_frame=10.0 if r["objects"] == 1 else 9.0) for r in rows]
    assert benchmark.arch_ratios(noisy)[-1]["stcn_over_mivos"] is None
    md = "\n".join(benchmark._arch_markdown({"rows": rows, "ratios": ratios}))
    assert "cost per object, MiVOS and STCN" in md and "stcn / mivos" in md
    args = benchmark.build_parser().parse_args(["--quick", "--arch", "stcn"])
    assert benchmark._settings(args, [])["archs"] == ["stcn"]


def test_fusion_data_from_an_stcn_network(davis_root, tmp_path):
    from dataset.generate_fusion import RUN_FILE, generate_fusion_data
    from model.checkpoint import save_weights

    torch.manual_seed(3)
    weights = tmp_path / "stcn_lite.pth"
    save_weights(build_propagation("lite", arch="stcn"), weights)
    run = tmp_path / "fusion_run"
    generate_fusion_data(davis_root, weights, run, preset="lite", arch="stcn", separation=3,
                         range_=2, subset=None, max_videos=1, device="cpu", progress=False)
    settings = json.loads((run / RUN_FILE).read_text())
    assert (settings["arch"], settings["top_k"]) == ("stcn", 20)
    assert sorted(p.name for p in (run / "syn-a" / "00000" / "00001").glob("*.png")) == [
        "00000.png", "00001.png", "00002.png"]
    # the settings of run folders written before ``arch`` existed imply mivos
    from dataset.generate_fusion import FusionGenerationSettings

    old = {k: v for k, v in settings.items() if k != "arch"}
    assert FusionGenerationSettings({**settings, "arch": "mivos"}).matches(old)
    assert not FusionGenerationSettings(settings).matches(old)


def test_gui_runs_stcn_through_the_public_api():
    from gui.controller import Session, SessionSettings
    from gui.models import ARCHITECTURES, WeightFiles, build_networks

    assert "stcn" in ARCHITECTURES
    nets = build_networks("stcn", "lite", WeightFiles(), random_weights=True, with_fusion=False)
    assert nets.propagation.arch == "stcn" and nets.fusion is None
    settings = SessionSettings(arch="stcn", preset="lite", random_weights=True, top_k=20,
                               fusion="none", num_objects=2)
    assert settings.inference_config() == InferenceConfig.for_arch("stcn", fusion="none",
                                                                   image_cache=64,
                                                                   feature_cache_mb=1024.0)
    session = Session(list(_video(n=4)), nets, settings)
    assert session.core.engine.arch == "stcn" and session.core.permanent.shared_key
    session.core.interact(_labels(), 0)
    assert (session.core.get_mask(0) == _labels()).all()
