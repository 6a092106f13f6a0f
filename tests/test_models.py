"""CPU forward / backward of the lite networks at small sizes, and structural facts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import ResNet
from model.presets import PRESETS, build_fusion, build_propagation, build_s2m, get_preset
from model.propagation import QueryFeatures

SIZES = [(64, 64), (48, 80)]


def assert_all_grads(model: nn.Module) -> None:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for name, p in params:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for _, p in params)


def recorder(store: dict, key: str, which: str = "input"):
    """Forward hook that records a module's first input or its output (and changes nothing)."""

    def hook(module, inputs, output) -> None:
        store[key] = inputs[0] if which == "input" else output

    return hook


def random_loss(out: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    target = (torch.rand(out.shape, generator=gen) > 0.5).float()
    return F.binary_cross_entropy_with_logits(out, target)


# ---------------------------------------------------------------- presets


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="lite, mivos"):
        build_s2m("huge")
    assert get_preset("lite") is PRESETS["lite"]
    assert get_preset(PRESETS["mivos"]) is PRESETS["mivos"]


# ---------------------------------------------------------------- backbone


def test_resnet_strides_and_dilation():
    net = ResNet("resnet18", in_channels=4, replace_stride_with_dilation=(False, False, True))
    feats = net(torch.randn(2, 4, 64, 64))
    assert [f.shape[1:] for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]
    assert net.out_strides == [4, 8, 16, 16]
    plain = ResNet("resnet50", last_layer=3)
    assert plain.out_channels == [256, 512, 1024] and plain.out_strides == [4, 8, 16]
    assert [f.shape[-1] for f in plain(torch.randn(1, 3, 64, 64))] == [16, 8, 4]
    with pytest.raises(ValueError, match="resnet18, resnet50"):
        ResNet("resnet34")


def test_mivos_s2m_layer4_is_dilated_not_strided():
    backbone = build_s2m("mivos").backbone  # structure only, no forward at this size
    first, second = backbone.layer4[0], backbone.layer4[1]
    assert first.conv2.stride == (1, 1) and first.conv2.dilation == (1, 1)
    assert first.downsample[0].stride == (1, 1)
    assert second.conv2.dilation == (2, 2) and second.conv2.padding == (2, 2)
    assert backbone.layer3[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert backbone.layer3[0].conv1.stride == (1, 1)
    assert backbone.out_strides == [4, 8, 16, 16]


def test_lite_s2m_keeps_stride_16():
    s2m = build_s2m("lite").eval()
    feats = s2m.backbone(torch.randn(1, 6, 64, 64))
    assert feats[-1].shape[-2:] == (4, 4) and feats[0].shape[-2:] == (16, 16)
    assert s2m.backbone.layer4[1].conv1.dilation == (2, 2)


# ---------------------------------------------------------------- S2M


@pytest.mark.parametrize("size", SIZES)
def test_s2m_forward_backward(size):
    torch.manual_seed(0)
    net = build_s2m("lite").train()
    x = torch.randn(2, 6, *size)
    out = net(x)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()
    random_loss(out).backward()
    assert_all_grads(net)


def test_s2m_concatenates_low_level_first():
    net = build_s2m("lite").eval()
    seen = {}
    net.classifier.classifier.register_forward_hook(recorder(seen, "in"))
    net.classifier.project.register_forward_hook(recorder(seen, "low", "output"))
    net(torch.randn(1, 6, 64, 64))
    low_c = get_preset("lite").s2m.low_level_channels
    assert torch.equal(seen["in"][:, :low_c], seen["low"])
    assert seen["in"].shape[1] == low_c + get_preset("lite").s2m.aspp_channels


def test_s2m_rejects_wrong_channels():
    with pytest.raises(ValueError, match="6"):
        build_s2m("lite")(torch.randn(2, 5, 64, 64))


# ---------------------------------------------------------------- propagation


def _memory(net, image, masks, single_object):
    """Encode T frames for B objects: keys B x CK x T x h x w, values B x CV x T x h x w."""
    keys, values = [], []
    b = masks.shape[0]
    for t in range(masks.shape[1]):
        mask = masks[:, t : t + 1]
        others = None if single_object else masks[:, t : t + 1].flip(0)
        k, v = net.encode_memory(image[t : t + 1].expand(b, -1, -1, -1), mask, others)
        keys.append(k)
        values.append(v)
    return torch.stack(keys, 2), torch.stack(values, 2)


@pytest.mark.parametrize("single_object", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_propagation_forward_backward(size, single_object):
    torch.manual_seed(1)
    net = build_propagation("lite", single_object=single_object).train()
    h, w = size
    frames = torch.randn(4, 3, h, w)  # 3 memory frames + 1 query frame
    masks = torch.rand(2, 3, h, w)  # 2 objects x 3 frames
    mem_key, mem_value = _memory(net, frames, masks, single_object)
    assert mem_key.shape == (2, net.key_dim, 3, h // 16, w // 16)
    assert mem_value.shape == (2, net.value_dim, 3, h // 16, w // 16)
    query = net.encode_query(frames[3:])
    assert query.key.shape == (1, net.key_dim, h // 16, w // 16)
    assert query.f8.shape[-2:] == (h // 8, w // 8) and query.f4.shape[-2:] == (h // 4, w // 4)
    logits = net.segment(query, mem_key, mem_value)  # full softmax, as in training
    assert logits.shape == (2, 1, h, w)
    assert torch.isfinite(logits).all()
    random_loss(logits).backward()
    assert_all_grads(net)


def test_single_object_network_has_4_channel_stem():
    net = build_propagation("lite", single_object=True)
    assert net.mask_rgb_encoder.conv1.weight.shape[1] == 4
    with pytest.raises(ValueError, match="others"):
        net.encode_memory(torch.randn(1, 3, 64, 64), torch.rand(1, 1, 64, 64),
                          torch.rand(1, 1, 64, 64))


@pytest.fixture(scope="module")
def prop_eval():
    torch.manual_seed(2)
    net = build_propagation("lite").eval()
    frames = torch.randn(4, 3, 64, 64)
    masks = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        mem_key, mem_value = _memory(net, frames, masks, False)
        query = net.encode_query(frames[3:])
    return net, query, mem_key, mem_value


@pytest.mark.parametrize("top_k", [None, 5])
def test_segment_expanded_query_matches_per_object(prop_eval, top_k):
    net, query, mem_key, mem_value = prop_eval
    with torch.no_grad():
        joint = net.segment(query, mem_key, mem_value, top_k=top_k)
        repeated = QueryFeatures(*(t.repeat(2, 1, 1, 1) for t in
                                   (query.f16, query.f8, query.f4, query.key, query.value)))
        explicit = net.segment(repeated, mem_key, mem_value, top_k=top_k)
        single = [net.segment(query, mem_key[i : i + 1], mem_value[i : i + 1], top_k=top_k)
                  for i in range(2)]
    assert torch.allclose(joint, explicit, atol=1e-5)
    assert torch.allclose(joint, torch.cat(single), atol=1e-5)
    assert not torch.allclose(joint[0], joint[1])  # objects have different memories


def test_segment_top_k_changes_readout(prop_eval):
    net, query, mem_key, mem_value = prop_eval
    with torch.no_grad():
        full = net.segment(query, mem_key, mem_value, top_k=None)
        top = net.segment(query, mem_key, mem_value, top_k=2)
        everything = net.segment(query, mem_key, mem_value, top_k=mem_key[0, 0].numel())
    assert not torch.allclose(full, top, atol=1e-4)
    assert torch.allclose(full, everything, atol=1e-5)


def test_decoder_input_is_readout_then_query_value(prop_eval):
    net, query, mem_key, mem_value = prop_eval
    seen = {}
    handle = net.decoder.compress.register_forward_hook(recorder(seen, "x"))
    with torch.no_grad():
        net.segment(query, mem_key, mem_value)
    handle.remove()
    x = seen["x"]
    cv = net.value_dim
    assert x.shape == (2, 2 * cv, 4, 4)
    assert torch.equal(x[:, cv:], query.value.expand(2, -1, -1, -1))
    # Readout recomputed from REFERENCE.md b.4: softmax over memory of k_M^T k_Q / sqrt(CK).
    mk, mv, qk = mem_key.flatten(2), mem_value.flatten(2), query.key.flatten(2)
    weights = torch.softmax(torch.einsum("bcn,cm->bnm", mk, qk[0]) / math.sqrt(net.key_dim), 1)
    readout = torch.einsum("bcn,bnm->bcm", mv, weights).view(2, cv, 4, 4)
    assert torch.allclose(x[:, :cv], readout, atol=1e-4)


def test_memory_read_without_top_k_gives_key_gradients(prop_eval):
    net, query, mem_key, mem_value = prop_eval
    mem_key = mem_key.clone().requires_grad_(True)
    mem_value = mem_value.clone().requires_grad_(True)
    query_key = query.key.clone().requires_grad_(True)
    q = QueryFeatures(query.f16, query.f8, query.f4, query_key, query.value)
    random_loss(net.segment(q, mem_key, mem_value, top_k=None)).backward()
    for t in (mem_key, mem_value, query_key):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_query_batch_must_match():
    net = build_propagation("lite").eval()
    with torch.no_grad():
        query = net.encode_query(torch.randn(2, 3, 64, 64))
        k, v = net.encode_memory(torch.randn(3, 3, 64, 64), torch.rand(3, 1, 64, 64))
        with pytest.raises(ValueError, match="batch 2"):
            net.segment(query, k.unsqueeze(2), v.unsqueeze(2))


# ---------------------------------------------------------------- attention transfer


def _reference_attention(mem_key, query_key, diff):
    """REFERENCE.md c.2 written out: area-down, W = softmax_mem(k_M^T k_Q / sqrt(CK)), A = d W, up."""
    b, ck, h, w = mem_key.shape
    d = F.interpolate(diff, size=(h, w), mode="area").flatten(2)  # B x C x N
    qk = query_key.expand(b, -1, -1, -1).flatten(2)
    weights = torch.softmax(torch.einsum("bkn,bkm->bnm", mem_key.flatten(2), qk) / math.sqrt(ck), 1)
    a = torch.einsum("bcn,bnm->bcm", d, weights).view(b, -1, h, w)
    return F.interpolate(a, size=diff.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("query_batch", [1, 2])
def test_attention_transfer_matches_spec(query_batch):
    torch.manual_seed(3)
    net = build_propagation("lite").eval()
    mem_key = 3 * torch.randn(2, net.key_dim, 3, 5)
    query_key = 3 * torch.randn(query_batch, net.key_dim, 3, 5)
    diff = torch.rand(2, 2, 48, 80)
    with torch.no_grad():
        out = net.attention_transfer(mem_key, query_key, diff)
    assert out.shape == (2, 2, 48, 80)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, _reference_attention(mem_key, query_key, diff), atol=1e-5)
    # Every output is a convex combination of area-downsampled diff values.
    small = F.interpolate(diff, size=(3, 5), mode="area")
    assert (out.amax(dim=(2, 3)) <= small.amax(dim=(2, 3)) + 1e-6).all()


def test_attention_transfer_on_encoded_keys():
    torch.manual_seed(4)
    net = build_propagation("lite").eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mem_key, _ = net.encode_memory(image.expand(2, -1, -1, -1), torch.rand(2, 1, 64, 64))
        query_key = net.encode_query(torch.randn(1, 3, 64, 64)).key
        diff = torch.zeros(2, 2, 64, 64)
        diff[:, 0, :32] = 1.0
        out = net.attention_transfer(mem_key, query_key, diff)
    assert torch.allclose(out, _reference_attention(mem_key, query_key, diff), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert torch.count_nonzero(out[:, 1]) == 0  # an all-zero map transfers to zeros


# ---------------------------------------------------------------- fusion


@pytest.mark.parametrize("size", SIZES)
def test_fusion_forward_backward(size):
    torch.manual_seed(5)
    net = build_fusion("lite").train()
    b = 2
    out = net(torch.randn(b, 3, *size), torch.rand(b, 1, *size), torch.rand(b, 1, *size),
              torch.rand(b, 2, *size), torch.tensor([[0.25, 0.75], [0.6, 0.4]]))
    assert out.shape == (b, 1, *size) and torch.isfinite(out).all()
    random_loss(out).backward()
    assert_all_grads(net)


def test_fusion_input_order_and_layers():
    """The official weights expect [image, prev, curr, A+, A-, n_c, n_r] and this layer order."""
    torch.manual_seed(6)
    net = build_fusion("lite").eval()
    image = torch.randn(1, 3, 32, 48)
    prev, curr = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    attn, dist = torch.rand(1, 2, 32, 48), torch.tensor([[0.2, 0.8]])
    planes = torch.cat([torch.full_like(prev, 0.2), torch.full_like(prev, 0.8)], 1)
    x = torch.cat([image, prev, curr, attn, planes], 1)
    p = dict(net.named_parameters())

    def conv(t, name):
        return F.conv2d(t, p[f"{name}.weight"], p[f"{name}.bias"], padding=1)

    x = F.relu(conv(x, "conv1.0"))
    x = F.relu(x + conv(F.relu(conv(x, "conv2.0")), "conv2.2"))
    x = F.relu(x + conv(F.relu(conv(x, "conv3.0")), "conv3.2"))
    expected = conv(x, "final_conv")
    with torch.no_grad():
        out = net(image, prev, curr, attn, dist)
        swapped = net(image, curr, prev, attn, dist)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, swapped, atol=1e-4)


def test_fusion_rejects_bad_dist():
    net = build_fusion("lite")
    with pytest.raises(ValueError, match="dist"):
        net(torch.randn(1, 3, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16),
            torch.rand(1, 2, 16, 16), torch.tensor([0.5, 0.5]))


def test_segment_kernelized_memory_option():
    torch.manual_seed(3)
    net = build_propagation("lite").eval()
    with torch.no_grad():
        image = torch.randn(1, 3, 64, 64)
        query = net.encode_query(image)
        key, value = net.encode_memory(image.expand(2, -1, -1, -1), torch.rand(2, 1, 64, 64),
                                       torch.rand(2, 1, 64, 64))
        mem_k, mem_v = key.unsqueeze(2), value.unsqueeze(2)
        plain = net.segment(query, mem_k, mem_v, top_k=5)
        wide = net.segment(query, mem_k, mem_v, top_k=5, km_sigma=1e6)
        narrow = net.segment(query, mem_k, mem_v, top_k=5, km_sigma=0.5)
    assert torch.allclose(plain, wide, atol=1e-5)
    assert not torch.allclose(plain, narrow, atol=1e-4)
