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
