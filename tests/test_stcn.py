"""STCN propagation (model/stcn.py, REFERENCE.md j): checkpoint layout, forward / backward, the L2
memory read, one affinity shared by all objects, top-k, the single-object variant, and the STCN
trainers (train_prop.py / train_fusion.py --arch stcn) on generated data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import model.memory as memory
import train_fusion
import train_prop
from model import checkpoint as ckpt_cli
from model.checkpoint import (
    CheckpointMismatchError,
    count_parameters,
    load_propagation_weights,
    load_weights,
    save_weights,
)
from model.memory import affinity, read_memory
from model.presets import (
    PROPAGATION_ARCHS,
    PROPAGATION_KINDS,
    build_fusion,
    build_propagation,
    build_stcn,
    get_preset,
)
from model.stcn import STCN_TOP_K, STCNNetwork, STCNQueryFeatures
from tests.test_checkpoint import last_line, random_state, read_manifest
from train import propagation as train_propagation
from train.fusion import FusionTrainConfig, STCNAttentionReader
from train.propagation import PropTrainConfig, STCNTrainWrapper, propagation_loss
from util import amp
from util.amp import auto_amp
from util.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    resolve_config,
)

STCN_PARAMS = 54_434_180
STCN_TENSORS = 405
KIND = "propagation-stcn"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU, OpenMP spinning makes 2 threads much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _grads_everywhere(net: nn.Module) -> None:
    missing = [n for n, p in net.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not missing, missing[:10]


# ============================================================================ layout


def test_arch_names_and_kinds_are_defined_once():
    assert PROPAGATION_ARCHS == ("mivos", "stcn")
    assert PROPAGATION_KINDS == {"mivos": "propagation", "stcn": KIND}
    assert isinstance(build_propagation("lite", arch="stcn"), STCNNetwork)
    with pytest.raises(ValueError, match="stcn"):
        build_propagation("lite", arch="nope")


def test_manifest_equals_our_state_dict():
    with torch.device("meta"):
        net = build_stcn("mivos")
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in net.state_dict().items()]
    assert ours == read_manifest("propagation_stcn")  # keys, order, shapes, dtypes
    assert len(ours) == STCN_TENSORS and count_parameters(net) == STCN_PARAMS
    assert net.value_encoder.conv1.bias is not None and net.key_encoder.conv1.bias is None


def test_official_layout_loads_strictly_and_cli(tmp_path, capsys):
    state = random_state(read_manifest("propagation_stcn"), seed=5)
    path = tmp_path / "stcn.pth"
    torch.save(state, path)
    net = build_stcn("mivos")
    assert load_weights(net, path) == ([], [], [])
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    del net, loaded
    assert ckpt_cli.main(["--kind", KIND, str(path)]) == 0
    assert last_line(capsys.readouterr().out) == f"OK {KIND} {STCN_PARAMS} parameters"
    # stage-0 (single-object) layout: only the value-encoder stem differs
    stage0 = dict(state)
    stage0["value_encoder.conv1.weight"] = torch.randn(64, 4, 7, 7)
    torch.save(stage0, path)
    assert ckpt_cli.main(["--kind", KIND, "--single-object", str(path)]) == 0
    assert last_line(capsys.readouterr().out) == f"OK {KIND} {STCN_PARAMS - 64 * 49} parameters"


def test_lite_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    net = build_stcn("lite")
    path = tmp_path / "lite.pth"
    save_weights(net, path)
    assert ckpt_cli.main(["--kind", KIND, "--preset", "lite", str(path)]) == 0
    assert last_line(capsys.readouterr().out) == f"OK {KIND} {count_parameters(net)} parameters"
    assert count_parameters(net) == 8_822_700


def test_mismatch_hints_name_the_architecture(tmp_path):
    """A file of the other propagation architecture asks for --arch; another preset for
    --preset; a single-object STCN file points at train_prop.py --arch stcn --load."""
    stcn, mivos, stcn_s0 = (tmp_path / f"{n}.pth" for n in ("stcn", "mivos", "stcn_s0"))
    save_weights(build_stcn("lite"), stcn)
    save_weights(build_propagation("lite"), mivos)
    save_weights(build_stcn("lite", single_object=True), stcn_s0)
    cases = [
        (build_propagation("lite"), stcn,
         "this looks like a lite propagation-stcn checkpoint, not a propagation one: "
         "use --arch stcn"),
        (build_stcn("lite"), mivos,
         "this looks like a lite propagation checkpoint, not a propagation-stcn one: "
         "use --arch mivos"),
        (build_propagation("mivos", arch="stcn"), stcn,
         "this looks like a lite propagation-stcn checkpoint: add --preset lite"),
        (build_stcn("lite"), stcn_s0,
         "(propagation stage s0): the multi-object network loads it through train_prop.py "
         "--arch stcn --load"),
        (build_fusion("lite"), stcn,
         "this looks like a lite propagation-stcn checkpoint, not a fusion one: pass it to "
         "--prop-model --arch stcn"),
        (build_stcn("lite").key_encoder, stcn,
         "(it belongs to --prop-model --arch stcn with --preset lite)"),
    ]
    for net, path, hint in cases:
        with pytest.raises(CheckpointMismatchError) as info:
            load_weights(net, path)
        assert hint in str(info.value).splitlines()[0], str(info.value).splitlines()[0]


def test_key_projection_init():
    net = build_stcn("lite")
    w = net.key_proj.key_proj.weight.flatten(1)  # CK x (C16 * 9), orthogonal rows
    torch.testing.assert_close(w @ w.t(), torch.eye(w.shape[0]), atol=1e-5, rtol=0)
    assert torch.count_nonzero(net.key_proj.key_proj.bias) == 0


# ============================================================================ network


@pytest.fixture(scope="module")
def stcn_eval():
    """A lite STCN network in eval mode, 3 memory frames with 3 objects and one query frame."""
    torch.manual_seed(3)
    net = build_stcn("lite").eval()
    frames = torch.randn(4, 3, 64, 64)
    masks = torch.rand(3, 3, 64, 64)  # frames x objects
    with torch.no_grad():
        feats = net.encode_key(frames)
        values = net.encode_value(frames[:3], feats.f16[:3], masks)  # 3 frames x K x CV x h x w
    mem_key = feats.key[:3].permute(1, 0, 2, 3).unsqueeze(0)  # 1 x CK x T x h x w
    mem_value = values.permute(1, 2, 0, 3, 4).unsqueeze(0)  # 1 x K x CV x T x h x w
    query = feats.map(lambda t: t[3:])
    return net, query, mem_key, mem_value


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_forward_backward(size):
    torch.manual_seed(1)
    net = build_stcn("lite").train()
    h, w = size
    frames = torch.randn(3, 3, h, w)
    feats = net.encode_key(frames)
    assert isinstance(feats, STCNQueryFeatures)
    assert feats.key.shape == (3, net.key_dim, h // 16, w // 16)
    assert feats.value.shape == (3, net.value_dim, h // 16, w // 16)
    assert feats.f8.shape[-2:] == (h // 8, w // 8) and feats.f4.shape[-2:] == (h // 4, w // 4)
    masks = torch.rand(2, 2, h, w)  # frames 0, 1 x 2 objects
    values = net.encode_value(frames[:2], feats.f16[:2], masks)
    assert values.shape == (2, 2, net.value_dim, h // 16, w // 16)
    mem_key = feats.key[:2].transpose(0, 1).unsqueeze(0)
    mem_value = values.permute(1, 2, 0, 3, 4).unsqueeze(0)
    logits = net.segment(feats.map(lambda t: t[2:]), mem_key, mem_value)  # full softmax
    assert logits.shape == (1, 2, h, w) and torch.isfinite(logits).all()
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    (logits * weight).sum().backward()
    _grads_everywhere(net)


def test_encode_value_others_default_and_batch_broadcast(stcn_eval):
    net = stcn_eval[0]
    torch.manual_seed(4)
    image = torch.randn(1, 3, 64, 64)
    masks = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        f16 = net.encode_key(image).f16
        default = net.encode_value(image, f16, masks)
        others = torch.stack([masks[0, 1] + masks[0, 2], masks[0, 0] + masks[0, 2],
                              masks[0, 0] + masks[0, 1]]).unsqueeze(0)
        explicit = net.encode_value(image, f16, masks, others)
        alone = [net.encode_value(image, f16, masks[:, i:i + 1], others[:, i:i + 1])
                 for i in range(3)]
    torch.testing.assert_close(default, explicit, atol=1e-6, rtol=0)
    torch.testing.assert_close(default, torch.cat(alone, dim=1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="masks"):
        net.encode_value(image, f16, masks[0])


def test_single_object_variant():
    torch.manual_seed(5)
    net = build_stcn("lite", single_object=True).eval()
    assert net.value_encoder.conv1.weight.shape == (64, 4, 7, 7)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = net.encode_key(image)
        v = net.encode_value(image[:1], feats.f16[:1], torch.rand(1, 1, 64, 64))
        assert v.shape == (1, 1, net.value_dim, 4, 4)
        logits = net.segment(feats.map(lambda t: t[1:]), feats.key[:1].unsqueeze(2),
                             v.unsqueeze(3), top_k=STCN_TOP_K)
    assert logits.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="others"):
        net.encode_value(image[:1], feats.f16[:1], torch.rand(1, 1, 64, 64),
                         torch.rand(1, 1, 64, 64))


def test_decoder_input_is_readout_then_key_comp(stcn_eval):
    net, query, mem_key, mem_value = stcn_eval
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    handle = net.decoder.compress.register_forward_hook(hook)
    with torch.no_grad():
        net.segment(query, mem_key, mem_value)
    handle.remove()
    x, cv = seen["x"], net.value_dim
    assert x.shape == (3, 2 * cv, 4, 4)  # one row per object
    assert torch.equal(x[:, cv:], query.value.expand(3, -1, -1, -1))
    # readout from the definition: softmax over memory of -|k_M - k_Q|^2 / sqrt(CK), float64
    mk = mem_key[0].flatten(1).double()  # CK x N
    qk = query.key[0].flatten(1).double()  # CK x M
    dist = ((mk[:, :, None] - qk[:, None, :]) ** 2).sum(0)  # N x M
    weights = torch.softmax(-dist / math.sqrt(net.key_dim), dim=0)
    readout = torch.einsum("kcn,nm->kcm", mem_value[0].flatten(2).double(), weights)
    torch.testing.assert_close(x[:, :cv].double(), readout.view(3, cv, 4, 4), atol=1e-4, rtol=0)


# ============================================================================ the L2 memory read


def _l2_reference(mk, mv, qk, top_k):
    """Column by column in float64 from the definition: -|a - b|^2 / sqrt(CK), softmax over
    memory restricted to the top k, each column's own maximum subtracted."""
    mk, mv, qk = mk.double(), mv.double(), qk.double()
    batch, ck, n = mk.shape
    out = torch.zeros(batch, mv.shape[1], qk.shape[2], dtype=torch.float64)
    for b in range(batch):
        for j in range(qk.shape[2]):
            col = [-float(((mk[b, :, i] - qk[b, :, j]) ** 2).sum()) / math.sqrt(ck)
                   for i in range(n)]
            keep = sorted(range(n), key=lambda i: col[i], reverse=True)
            keep = keep if top_k is None else keep[:top_k]
            e = [math.exp(col[i] - col[keep[0]]) for i in keep]
            for i, ei in zip(keep, e, strict=True):
                out[b, :, j] += ei / sum(e) * mv[b, :, i]
    return out


def _inputs(batch=2, ck=8, cv=5, n=20, m=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, ck, n, generator=g), torch.randn(batch, cv, n, generator=g),
            torch.randn(batch, ck, m, generator=g))


def test_l2_affinity_matches_float64_definition():
    mk, _, qk = _inputs(ck=16, n=11, m=7, seed=1)
    ref = -torch.cdist(mk.double().transpose(1, 2), qk.double().transpose(1, 2)) ** 2 / 4.0
    torch.testing.assert_close(affinity(mk, qk, "l2").double(), ref, atol=1e-5, rtol=0)
    # the chunked block is the same, query-major
    block = memory._l2_block(qk, mk, memory._squared_norms(mk))
    torch.testing.assert_close(block.transpose(1, 2).double(), ref, atol=1e-5, rtol=0)


def test_l2_affinity_order_of_operations():
    # integer keys make 2ab - |a|^2 - |b|^2 exact, so only the final scaling rounds: it must be
    # a division by sqrt(CK) (not a multiplication by its reciprocal, not a pre-scaled query)
    g = torch.Generator().manual_seed(2)
    ck = 8
    mk = torch.randint(-3, 4, (1, ck, 40), generator=g).float()
    qk = torch.randint(-3, 4, (1, ck, 30), generator=g).float()
    exact = (-((mk.double()[0, :, :, None] - qk.double()[0, :, None, :]) ** 2).sum(0))[None]
    expected = exact.float() / math.sqrt(ck)
    block = memory._l2_block(qk, mk, memory._squared_norms(mk)).transpose(1, 2)
    assert torch.equal(block, expected)
    assert torch.equal(affinity(mk, qk, "l2"), expected)
    assert not torch.equal(exact.float() * (1 / math.sqrt(ck)), expected)  # test can tell


@pytest.mark.parametrize("top_k", [None, 1, 4])
def test_l2_read_matches_reference_and_chunking(top_k):
    mk, mv, qk = _inputs(seed=3)
    ref = _l2_reference(mk, mv, qk, top_k)
    for budget in (None, 1, 2 * 20 * 4 + 1):
        got = read_memory(mk, mv, qk, top_k=top_k, max_elements=budget, similarity="l2")
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    dense = torch.bmm(mv, memory.softmax_topk(affinity(mk, qk, "l2"), top_k))
    torch.testing.assert_close(dense.double(), ref, atol=1e-5, rtol=0)
    # and it is not the dot-product read
    assert (read_memory(mk, mv, qk, top_k=top_k).double() - ref).abs().max() > 1e-3


def test_l2_read_top_k_behaviour_and_gradients():
    mk, mv, qk = _inputs(batch=1, n=30, m=6, seed=4)
    full = read_memory(mk, mv, qk, similarity="l2")
    torch.testing.assert_close(read_memory(mk, mv, qk, top_k=30, similarity="l2"), full)
    assert not torch.allclose(read_memory(mk, mv, qk, top_k=2, similarity="l2"), full, atol=1e-4)
    # a query key equal to a memory key makes that position the column's maximum: with
    # top-1 the readout is exactly that position's value
    qk2 = mk[:, :, [3, 17]].clone()
    top1 = read_memory(mk, mv, qk2, top_k=1, similarity="l2")
    torch.testing.assert_close(top1, mv[:, :, [3, 17]])
    leaves = [t.clone().requires_grad_(True) for t in (mk, mv, qk)]
    read_memory(*leaves, top_k=5, similarity="l2").square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
    with pytest.raises(ValueError, match="similarity"):
        read_memory(mk, mv, qk, similarity="cosine")


def test_l2_read_in_bfloat16_uses_float32_affinity():
    mk, mv, qk = (t * 4 for t in _inputs(batch=1, n=30, m=8, seed=6))
    got = read_memory(mk.bfloat16(), mv.bfloat16(), qk.bfloat16(), similarity="l2")
    assert got.dtype == torch.bfloat16
    ref = read_memory(mk.bfloat16().float(), mv.bfloat16().float(), qk.bfloat16().float(),
                      similarity="l2")
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = read_memory(mk, mv, qk, top_k=4, similarity="l2")
    assert torch.isfinite(auto.float()).all()


# ============================================================================ one affinity, K objects


def _count_affinities(monkeypatch) -> list[tuple[int, ...]]:
    calls = []
    real = memory._l2_block

    def spy(q, mem_key, mem_sq):
        out = real(q, mem_key, mem_sq)
        calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(memory, "_l2_block", spy)
    return calls


@pytest.mark.parametrize("top_k", [None, 5])
def test_one_affinity_serves_all_objects(stcn_eval, monkeypatch, top_k):
    net, query, mem_key, mem_value = stcn_eval
    k, n = mem_value.shape[1], mem_key[0, 0].numel()
    calls = _count_affinities(monkeypatch)
    with torch.no_grad():
        readout = net.read(query.key, mem_key, mem_value, top_k=top_k)
    assert calls == [(1, 16, n)]  # one block: 1 frame x 16 query positions x N, for K = 3
    assert readout.shape == (1, k, net.value_dim, 4, 4)
    # chunked: one block per chunk, still not one per object
    calls.clear()
    with torch.no_grad():
        chunked = net.read(query.key, mem_key, mem_value, top_k=top_k, memory_budget=4 * n)
    assert calls == [(1, 4, n)] * 4
    torch.testing.assert_close(chunked, readout, atol=1e-5, rtol=0)
    monkeypatch.undo()
    # every object's readout equals a read of that object alone
    for i in range(k):
        alone = read_memory(mem_key.flatten(2), mem_value[:, i].flatten(2),
                            query.key.flatten(2), top_k=top_k, similarity="l2")
        torch.testing.assert_close(readout[:, i].flatten(2), alone, atol=1e-5, rtol=0)


def test_segment_objects_independent_of_each_other(stcn_eval):
    net, query, mem_key, mem_value = stcn_eval
    with torch.no_grad():
        joint = net.segment(query, mem_key, mem_value, top_k=STCN_TOP_K)
        single = [net.segment(query, mem_key, mem_value[:, i:i + 1], top_k=STCN_TOP_K)
                  for i in range(3)]
        flat = net.segment(query, mem_key.flatten(2), mem_value.flatten(3), top_k=STCN_TOP_K)
    assert joint.shape == (1, 3, 64, 64)
    torch.testing.assert_close(joint, torch.cat(single, dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat, joint, atol=0, rtol=0)
    assert not torch.allclose(joint[0, 0], joint[0, 1])
    with pytest.raises(ValueError, match="memory keys/values"):
        net.segment(query, mem_key, mem_value[0])


def test_top_k_default_and_effect(stcn_eval):
    assert STCN_TOP_K == 20
    net, query, mem_key, mem_value = stcn_eval
    n = mem_key[0, 0].numel()
    with torch.no_grad():
        full = net.segment(query, mem_key, mem_value)
        top = net.segment(query, mem_key, mem_value, top_k=2)
        everything = net.segment(query, mem_key, mem_value, top_k=n)
    assert not torch.allclose(full, top, atol=1e-4)
    torch.testing.assert_close(full, everything, atol=1e-5, rtol=0)


def test_attention_transfer_one_w_for_all_channels(stcn_eval, monkeypatch):
    net, query, mem_key, _ = stcn_eval
    torch.manual_seed(7)
    diff = torch.rand(1, 6, 64, 64)  # D+ and D- of K+1 = 3 channels
    key_m = mem_key[:, :, 0]  # 1 x CK x h x w, the interacted frame
    calls = _count_affinities(monkeypatch)
    with torch.no_grad():
        attn = net.attention_transfer(key_m, query.key, diff)
    assert len(calls) == 1 and attn.shape == diff.shape
    assert attn.min() >= 0 and attn.max() <= 1
    monkeypatch.undo()
    # from the definition: W = softmax over memory of the L2 affinity, A = d W, bilinear up
    w = torch.softmax(affinity(key_m.flatten(2), query.key.flatten(2), "l2"), dim=1)[0]
    small = nn.functional.interpolate(diff, size=(4, 4), mode="area").flatten(2)[0]
    expected = nn.functional.interpolate((small @ w).view(1, 6, 4, 4), size=(64, 64),
                                         mode="bilinear", align_corners=False)
    torch.testing.assert_close(attn, expected, atol=1e-6, rtol=0)


# ============================================================================ training pieces


def test_train_wrapper_forward_backward_and_loss():
    torch.manual_seed(8)
    net = build_stcn("lite")
    wrapper = STCNTrainWrapper(net, "train")
    wrapper.train_mode()
    frames = torch.randn(2, 3, 3, 64, 64)
    gt = (torch.rand(2, 3, 1, 64, 64) > 0.6).float()
    sec = (torch.rand(2, 3, 1, 64, 64) > 0.6).float() * (1 - gt)
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    sec = sec * selector[:, 1].view(2, 1, 1, 1, 1)
    out = wrapper(frames, gt, sec, selector)
    assert [t.shape for t in out.logits] == [(2, 3, 64, 64)] * 2
    torch.testing.assert_close(out.prob[0].sum(1), torch.ones(2, 64, 64))
    cls = (gt[:, :, 0] + 2 * sec[:, :, 0]).long()
    from model.losses import BootstrappedCE

    loss, scalars = propagation_loss(BootstrappedCE(10, 20, 0.15), out, cls, 0, selector)
    loss.backward()
    assert torch.isfinite(loss) and {"loss_f1", "loss_f2", "iou"} <= set(scalars)
    _grads_everywhere(net)


def test_train_wrapper_memorises_frame_1_with_its_prediction(monkeypatch):
    torch.manual_seed(9)
    net = build_stcn("lite", single_object=True)
    wrapper = STCNTrainWrapper(net, "frozen")
    wrapper.train_mode()
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    masks_seen = []
    real = net.encode_value

    def spy(image, f16, masks, others=None):
        masks_seen.append(masks)
        return real(image, f16, masks, others)

    monkeypatch.setattr(net, "encode_value", spy)
    frames = torch.randn(1, 3, 3, 64, 64)
    gt = (torch.rand(1, 3, 1, 64, 64) > 0.5).float()
    out = wrapper(frames, gt)
    assert len(masks_seen) == 2
    assert torch.equal(masks_seen[0], gt[:, 0])
    assert masks_seen[1].requires_grad  # not detached
    torch.testing.assert_close(masks_seen[1], out.prob[0][:, 1:])


def test_stage0_weights_widen_into_multi_object_network(tmp_path):
    torch.manual_seed(10)
    s0 = build_stcn("lite", single_object=True)
    path = tmp_path / "s0.pth"
    save_weights(s0, path)
    net = build_stcn("lite")
    load_propagation_weights(net, path)
    stem = net.value_encoder.conv1.weight
    assert torch.equal(stem[:, :4], s0.value_encoder.conv1.weight)
    assert stem[:, 4].abs().sum() > 0  # the "others" slice, orthogonally initialised
    with pytest.raises(CheckpointMismatchError):
        load_propagation_weights(build_propagation("lite"), path)


def test_attention_reader_loads_keys_only_and_shares_w(tmp_path, monkeypatch):
    torch.manual_seed(11)
    net = build_stcn("lite").eval()
    path = tmp_path / "stcn.pth"
    save_weights(net, path)
    reader = STCNAttentionReader(get_preset("lite").stcn)
    reader.load_from_propagation(path)
    assert all(not p.requires_grad for p in reader.parameters())
    assert set(reader.state_dict()) == {k for k in net.state_dict()
                                        if k.startswith(("key_encoder.", "key_proj."))}
    ref, target = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    before, after = torch.rand(2, 2, 64, 64), (torch.rand(2, 2, 64, 64) > 0.5).float()
    calls = _count_affinities(monkeypatch)
    attn = reader(ref, before, after, target)
    assert len(calls) == 1 and calls[0][0] == 2  # one block for both objects and signs
    monkeypatch.undo()
    assert attn.shape == (2, 2, 2, 64, 64) and attn.min() >= 0 and attn.max() <= 1
    with torch.no_grad():
        keys_r, keys_t = net.encode_key(ref).key, net.encode_key(target).key
        d = after - before
        for o in range(2):
            expected = net.attention_transfer(keys_r, keys_t, torch.stack(
                [d[:, o].clamp(0, 1), (-d[:, o]).clamp(0, 1)], dim=1))
            torch.testing.assert_close(attn[:, o], expected, atol=1e-5, rtol=0)
    # a MiVOS propagation file is refused
    mivos = tmp_path / "mivos.pth"
    save_weights(build_propagation("lite"), mivos)
    with pytest.raises(CheckpointMismatchError):
        reader.load_from_propagation(mivos)


# ============================================================================ configs


def test_stcn_stage_presets_follow_the_spec():
    expected = {"s0": (8, 300_000, (150_000,)), "s1": (4, 500_000, (400_000,)),
                "s2": (4, 300_000, (250_000,)), "s02": (4, 150_000, (125_000,))}
    for stage, (batch, iterations, steps) in expected.items():
        mivos = PropTrainConfig.for_stage(stage)
        cfg = mivos.for_arch("stcn")
        assert (cfg.arch, cfg.batch_size, cfg.iterations, cfg.lr_steps) == (
            "stcn", batch, iterations, steps)
        assert (cfg.lr, cfg.start_warm, cfg.end_warm, cfg.curriculum_fractions,
                cfg.single_object, cfg.amp, cfg.name) == (
            1e-5, 20_000, 70_000, mivos.curriculum_fractions, mivos.single_object, "auto",
            f"stcn_{stage}")
    assert PropTrainConfig.for_stage("s1").for_arch("mivos") == PropTrainConfig.for_stage("s1")
    f = FusionTrainConfig.for_stage("s1").for_arch("stcn")
    assert (f.amp, f.name, f.iterations, f.lr) == ("auto", "fusion_stcn_s1", 10_000, 1e-4)


def test_cli_resolves_stcn_recipe_and_auto_amp(monkeypatch, tmp_path):
    monkeypatch.setattr(amp, "native_bf16", lambda: False)
    cfg, _ = resolve_config(PropTrainConfig, ["--arch", "stcn", "--stage", "s1", "--iterations",
                                              "1000", "--output", "o", "--device", "cpu"])
    assert cfg.amp == "none"  # never bf16 autocast on a CPU without native bf16
    assert cfg.lr_steps == (800,) and cfg.name == "stcn_s1"  # 400K of 500K, scaled
    monkeypatch.setattr(amp, "native_bf16", lambda: True)
    cfg, _ = resolve_config(PropTrainConfig, ["--arch", "stcn", "--preset", "lite", "--output",
                                              "o", "--device", "cpu"])
    assert (cfg.amp, cfg.batch_size, cfg.crop_size, cfg.stage) == ("bf16", 4, 96, "s0")
    assert auto_amp("cuda:0") == "fp16"
    explicit, _ = resolve_config(PropTrainConfig, ["--arch", "stcn", "--amp", "none",
                                                   "--output", "o"])
    assert explicit.amp == "none"
    mivos, _ = resolve_config(PropTrainConfig, ["--output", "o", "--device", "cpu"])
    assert mivos.amp == "none" and mivos.arch == "mivos"
    assert config_from_dict(PropTrainConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="imagenet-value"):
        resolve_config(PropTrainConfig, ["--imagenet-value", "x.pth", "--output", "o"])


def test_auto_amp_follows_native_bf16(monkeypatch):
    """--amp auto through util.amp: bf16 only where util.amp.native_bf16 says the CPU has it."""
    for level, native in (("AVX2", False), ("DEFAULT", False), ("AVX512_BF16", True)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda level=level: level)
        assert amp.native_bf16() is native
        assert auto_amp("cpu") == ("bf16" if native else None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_amp(None) is None


# ============================================================================ trainers


def common_args(data_root: Path) -> list[str]:
    return ["--preset", "lite", "--data", "synthetic", "--data-root", str(data_root),
            "--synthetic-preset", "tiny", "--synthetic-static-count", "6",
            "--synthetic-static-size", "96", "--crop-size", "64", "--batch-size", "2",
            "--num-workers", "0", "--no-progress", "--no-tensorboard", "--image-interval", "0",
            "--log-interval", "1"]


def check_cli(path: Path, *extra: str, kind: str = KIND) -> int:
    return ckpt_cli.main(["--kind", kind, "--preset", "lite", *extra, str(path)])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stcn_data")


@pytest.fixture(scope="module")
def stcn_s0(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stcn_s0")
    assert train_prop.main(common_args(data_root) + ["--arch", "stcn", "--stage", "s0",
                                                     "--iterations", "2",
                                                     "--output", str(out)]) == 0
    return out / "stcn_s0_final.pth"


@pytest.fixture(scope="module")
def stcn_s2(data_root, stcn_s0, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stcn_s2")
    assert train_prop.main(common_args(data_root) + [
        "--arch", "stcn", "--stage", "s2", "--iterations", "2", "--load", str(stcn_s0),
        "--output", str(out)]) == 0
    return out / "stcn_s2_final.pth"


def test_train_prop_stcn_stages_and_checkpoint_kinds(stcn_s0, stcn_s2):
    assert check_cli(stcn_s0, "--single-object") == 0
    assert check_cli(stcn_s0) == 1  # 4-channel value encoder: needs --single-object
    assert check_cli(stcn_s2) == 0
    assert check_cli(stcn_s2, kind="propagation") == 1
    s0 = torch.load(stcn_s0, weights_only=True)["value_encoder.conv1.weight"]
    s2 = torch.load(stcn_s2, weights_only=True)["value_encoder.conv1.weight"]
    assert s0.shape[1] == 4 and s2.shape[1] == 5
    cfg = json.loads((stcn_s2.parent / "config.json").read_text())
    assert cfg["arch"] == "stcn" and cfg["amp"] in ("none", "bf16")  # resolved, never "auto"
    state = torch.load(stcn_s2.parent / "stcn_s2_checkpoint.pth", weights_only=True)
    assert state["iteration"] == 2


def test_train_prop_stcn_imagenet_flags(tmp_path):
    from types import SimpleNamespace

    cfg, _ = resolve_config(PropTrainConfig, ["--arch", "stcn", "--output", str(tmp_path),
                                              "--imagenet", str(tmp_path / "r50.pth")])
    with pytest.raises(ConfigError, match="imagenet-value"):
        train_propagation.build_network(cfg, SimpleNamespace(resume_path=None))


def test_train_fusion_stcn(data_root, stcn_s2, tmp_path, capsys):
    from dataset.generate_fusion import generate_fusion_data

    # fusion data of the synthetic videos from a (random) MiVOS-architecture network, given
    # with --fusion-root
    torch.manual_seed(12)
    mivos = tmp_path / "mivos_lite.pth"
    save_weights(build_propagation("lite"), mivos)
    videos = data_root / "synthetic" / "tiny"
    run = tmp_path / "fusion_run"
    generate_fusion_data(videos, mivos, run, preset="lite", separation=3, range_=3,
                         max_videos=2, device="cpu", progress=False)
    out = tmp_path / "fusion"
    args = common_args(data_root) + ["--arch", "stcn", "--iterations", "2",
                                     "--prop-model", str(stcn_s2)]
    assert train_fusion.main(args + ["--fusion-root", str(run), "--output", str(out)]) == 0
    assert check_cli(out / "fusion_stcn_s0_final.pth", kind="fusion") == 0
    capsys.readouterr()
    # without --fusion-root the data is generated by the STCN network itself
    small = ["--generate-separation", "3", "--generate-range", "3", "--generate-max-videos", "2"]
    assert train_fusion.main(args + small + ["--output", str(tmp_path / "f2")]) == 0
    assert check_cli(tmp_path / "f2" / "fusion_stcn_s0_final.pth", kind="fusion") == 0
    runs = list((data_root / "synthetic" / "fusion" / "tiny").glob(f"{stcn_s2.stem}-*-stcn-*"))
    assert runs and json.loads((runs[0] / "fusion_run.json").read_text())["arch"] == "stcn"
    capsys.readouterr()
    # a MiVOS propagation model given to an STCN fusion training: a clear error, exit 2
    bad = common_args(data_root) + ["--arch", "stcn", "--iterations", "2", "--prop-model",
                                    str(mivos), "--fusion-root", str(run)]
    assert train_fusion.main(bad + ["--output", str(tmp_path / "f3")]) == 2
    assert "mivos_lite.pth" in capsys.readouterr().err
