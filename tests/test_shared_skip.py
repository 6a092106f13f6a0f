"""The decoder's skip branches depend only on the frame: with K objects they run once."""

from __future__ import annotations

import torch

from model.presets import build_propagation


def test_skip_branches_run_once_per_frame_and_broadcast_over_objects():
    torch.manual_seed(0)
    net = build_propagation("lite").eval()
    image = torch.randn(1, 3, 64, 96)
    k = 3
    with torch.no_grad():
        query = net.encode_query(image)
        key, value = net.encode_memory(image.expand(k, -1, -1, -1), torch.rand(k, 1, 64, 96),
                                       torch.rand(k, 1, 64, 96))
        seen = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
                 for m in (net.decoder.up_16_8.skip_conv1, net.decoder.up_8_4.skip_conv1)]
        logits = net.segment(query, key.unsqueeze(2), value.unsqueeze(2), top_k=None)
        for h in hooks:
            h.remove()
        assert seen == [1, 1]  # one frame, not one copy per object
        assert logits.shape == (k, 1, 64, 96)
        # the same as decoding each object on its own
        for i in range(k):
            one = net.segment(query, key[i:i + 1].unsqueeze(2), value[i:i + 1].unsqueeze(2), top_k=None)
            assert torch.allclose(one, logits[i:i + 1], atol=1e-5)


def test_decoding_from_precomputed_skips_is_bit_identical():
    """with_decoder_skips: the skip outputs computed once replace f8 / f4 and decode to the
    same logits (both architectures)."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 96)
    masks = torch.rand(3, 1, 64, 96)
    for arch in ("mivos", "stcn"):
        net = build_propagation("lite", arch=arch).eval()
        with torch.no_grad():
            if arch == "mivos":
                query = net.encode_query(image)
                key, value = net.encode_memory(image.expand(3, -1, -1, -1), masks,
                                               torch.rand(3, 1, 64, 96))
                key, value = key.unsqueeze(2), value.unsqueeze(2)
            else:
                query = net.encode_key(image)
                key = query.key.unsqueeze(2)
                value = net.encode_value(image, query.f16, masks[:, 0].unsqueeze(0)).unsqueeze(3)
            ready = net.with_decoder_skips(query)
            assert ready.f8 is None and ready.f4 is None and len(ready.skips) == 2
            assert net.with_decoder_skips(ready) is ready
            assert query.skips is None and query.f8 is not None  # the input is left as it was
            expected = net.segment(query, key, value, top_k=5)
            got = net.segment(ready, key, value, top_k=5)
            assert torch.equal(got, expected), arch
            expanded = ready.expand(3)
            assert expanded.skips[0].shape[0] == 3 and expanded.f8 is None
