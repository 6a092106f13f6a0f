"""A plain, dense restatement of the original DAVIS interactive protocol, for tests only.

It follows docs/REFERENCE.md sections d (inference core) and e (DAVIS driver) line by line with
the simplest tensor code: every frame padded once, a dense affinity with a top-k scatter, one
object per memory read, a preallocated memory of the pass, S2M one object at a time, the fusion
attention as ``d W`` with a dense W. It shares only the networks' modules with the project (the
encoders, projections, decoder, FusionNet and S2M), never the memory read, the inference core,
the memory bank or the driver, so a test can hold the project's driver against it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from model.aggregate import aggregate
from util.tensor_util import normalize_image, pad_divide_by


def _dense_read(mk, mv, qk, top_k):
    """mk 1 x CK x T x h x w, mv 1 x CV x T x h x w, qk 1 x CK x h x w -> 1 x CV x h x w."""
    b, ck, t, h, w = mk.shape
    cv = mv.shape[1]
    mi = mk.reshape(b, ck, t * h * w).transpose(1, 2)
    qi = qk.reshape(1, ck, h * w).expand(b, -1, -1) / math.sqrt(ck)
    aff = torch.bmm(mi, qi)  # B x THW x HW
    if top_k is None or top_k >= aff.shape[1]:
        weights = torch.softmax(aff, dim=1)
    else:
        values, indices = torch.topk(aff, k=top_k, dim=1)
        ex = torch.exp(values - values[:, 0:1])
        ex = ex / ex.sum(dim=1, keepdim=True)
        weights = torch.zeros_like(aff).scatter(1, indices, ex)
    return torch.bmm(mv.reshape(b, cv, t * h * w), weights).reshape(b, cv, h, w)


class ReferenceCore:
    """The inference core of REFERENCE.md d, everything at the padded size."""

    def __init__(self, prop, fusion, frames: np.ndarray, k: int, top_k=50, mem_freq=5):
        self.prop, self.fusion, self.k, self.top_k, self.mem_freq = prop, fusion, k, top_k, mem_freq
        imgs = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().float() / 255
        self.images, self.pad = pad_divide_by(normalize_image(imgs), 16)  # T x 3 x Hp x Wp
        self.t, _, self.ph, self.pw = self.images.shape
        self.prob = torch.zeros(k + 1, self.t, self.ph, self.pw)
        self.prob[0] = 1e-7
        self.masks = torch.zeros(self.t, self.ph, self.pw, dtype=torch.long)
        self.interacted: set[int] = set()
        self.certain_k = self.certain_v = None
        self.query = {}

    def image(self, t):
        return self.images[t:t + 1]

    def memorize(self, t, obj_prob):
        """obj_prob: K x Hp x Wp -> keys K x CK x 1 x h x w, values K x CV x 1 x h x w."""
        masks = obj_prob.unsqueeze(1)
        if self.k == 1:
            others = torch.zeros_like(masks)
        else:
            others = torch.cat([masks[[j for j in range(self.k) if j != i]].sum(0, keepdim=True)
                                for i in range(self.k)])
        x = torch.cat([self.image(t).repeat(self.k, 1, 1, 1), masks, others], dim=1)
        key, value = self.prop.kv_m_f16(self.prop.mask_rgb_encoder(x)[-1])
        return key.unsqueeze(2), value.unsqueeze(2)

    def query_of(self, t):
        if t not in self.query:
            f16, f8, f4 = self.prop.rgb_encoder(self.image(t))
            qk, qv = self.prop.kv_q_f16(f16)
            self.query[t] = (f8, f4, qk, qv)
        return self.query[t]

    def segment(self, keys, values, t):
        f8, f4, qk, qv = self.query_of(t)
        readout = torch.cat([_dense_read(keys[i:i + 1], values[i:i + 1], qk, self.top_k)
                             for i in range(self.k)])
        x = torch.cat([readout, qv.expand(self.k, -1, -1, -1)], dim=1)
        return torch.sigmoid(self.prop.decoder(x, f8, f4))[:, 0]  # K x Hp x Wp

    def attention(self, mk16, pos, neg, qk):
        """mk16 1 x CK x 1 x h x w; pos / neg 1 x 1 x Hp x Wp -> 1 x 2 x Hp x Wp."""
        _, ck, _, h, w = mk16.shape
        mk = mk16.reshape(1, ck, h * w).transpose(1, 2)
        W = torch.softmax(torch.bmm(mk, qk.reshape(1, ck, h * w) / math.sqrt(ck)), dim=1)
        maps = [F.interpolate(m, size=(h, w), mode="area").reshape(1, 1, h * w) @ W for m in (pos, neg)]
        attn = torch.cat(maps, dim=1).reshape(1, 2, h, w)
        return F.interpolate(attn, size=(self.ph, self.pw), mode="bilinear", align_corners=False)

    def fuse(self, tc, tr, ti, prev, curr, mk16, qk):
        nc, nr = abs(tc - ti) / abs(tc - tr), abs(tr - ti) / abs(tc - tr)
        dist = torch.tensor([[nc, nr]], dtype=torch.float32)
        out = torch.zeros(self.k, self.ph, self.pw)
        for k in range(1, self.k + 1):
            attn = self.attention(mk16[k - 1:k], self.pos[k:k + 1].unsqueeze(0),
                                  self.neg[k:k + 1].unsqueeze(0), qk)
            logit = self.fusion(self.image(ti), prev[k].view(1, 1, self.ph, self.pw),
                                curr[k].view(1, 1, self.ph, self.pw), attn, dist)
            out[k - 1] = torch.sigmoid(logit)[0, 0]
        return aggregate(out, dim=0)

    def do_pass(self, key_k, idx, forward):
        n_certain = self.certain_k.shape[2]
        if forward:
            closest = min([t for t in self.interacted if t > idx] + [self.t])
            targets, end = range(idx + 1, closest), closest - 1
            total = (closest - idx - 1) // self.mem_freq + 1 + n_certain
        else:
            closest = max([t for t in self.interacted if t < idx] + [-1])
            targets, end = range(idx - 1, closest, -1), closest + 1
            total = (idx - closest - 1) // self.mem_freq + 1 + n_certain
        _, ck, _, h, w = self.certain_k.shape
        cv = self.certain_v.shape[1]
        keys = torch.empty(self.k, ck, total, h, w)
        values = torch.empty(self.k, cv, total, h, w)
        keys[:, :, :n_certain], values[:, :, :n_certain] = self.certain_k, self.certain_v
        front, prev_in_mem, last = n_certain, True, idx
        for ti in targets:
            n = front if prev_in_mem else front + 1
            out = aggregate(self.segment(keys[:, :, :n], values[:, :, :n], ti), dim=0)
            if ti != end:
                keys[:, :, front:front + 1], values[:, :, front:front + 1] = self.memorize(ti, out[1:])
                if abs(ti - last) >= self.mem_freq:
                    front, last, prev_in_mem = front + 1, ti, True
                else:
                    prev_in_mem = False
            if closest not in (self.t, -1):
                self.prob[:, ti] = self.fuse(closest, idx, ti, self.prob[:, ti], out, key_k,
                                             self.query_of(ti)[2])
            else:
                self.prob[:, ti] = out

    def interact(self, mask, idx):
        """mask: (K+1) x Hp x Wp."""
        self.interacted.add(idx)
        diff = mask - self.prob[:, idx]
        self.pos, self.neg = diff.clamp(0, 1), (-diff).clamp(0, 1)
        self.prob[:, idx] = mask
        key_k, key_v = self.memorize(idx, mask[1:])
        if self.certain_k is None:
            self.certain_k, self.certain_v = key_k, key_v
        else:
            self.certain_k = torch.cat([self.certain_k, key_k], 2)
            self.certain_v = torch.cat([self.certain_v, key_v], 2)
        self.do_pass(key_k, idx, True)
        self.do_pass(key_k, idx, False)
        for t in range(self.t):
            self.masks[t] = torch.argmax(self.prob[:, t], dim=0)

    def update_mask_only(self, mask, idx):
        self.masks[idx] = torch.argmax(mask, dim=0)

    def unpadded_masks(self):
        left, right, top, bottom = self.pad
        return self.masks[:, top:self.ph - bottom, left:self.pw - right].numpy().astype(np.uint8)


class ReferenceDriver:
    """The DAVIS driver of REFERENCE.md e.2-e.3 around :class:`ReferenceCore`."""

    def __init__(self, prop, fusion, s2m, frames, k, top_k=50):
        self.core = ReferenceCore(prop, fusion, frames, k, top_k)
        self.s2m, self.k = s2m, k
        self.count, self.schedule = 0, [2, 5, 7]

    def to_mask(self, scribbles):
        from davisinteractive.utils.scribbles import scribbles2mask

        idx = 0
        for idx, s in enumerate(scribbles["scribbles"]):
            if s:
                scribbles = {**scribbles, "scribbles": [s]}
                break
        raster = scribbles2mask(scribbles, (self.core.ph, self.core.pw))[0]
        kernel = np.ones((3, 3), np.uint8)
        out = torch.zeros(self.k, self.core.ph, self.core.pw)
        for k in range(1, self.k + 1):
            pos = cv2.dilate((raster == k).astype(np.uint8), kernel).astype(bool)
            neg = cv2.dilate(((raster != k) & (raster != -1)).astype(np.uint8), kernel).astype(bool)
            maps = torch.from_numpy(np.stack([pos, neg])).float().unsqueeze(0)
            x = torch.cat([self.core.image(idx), (self.core.masks[idx] == k).float()[None, None], maps], 1)
            out[k - 1] = torch.sigmoid(self.s2m(x))[0, 0]
        return aggregate(out, dim=0, hard=True), idx

    @torch.no_grad()
    def step(self, scribbles):
        mask, idx = self.to_mask(scribbles)
        if self.schedule and self.count == self.schedule[0]:
            self.schedule = self.schedule[1:]
            self.core.interact(mask, idx)
            nxt = None
        else:
            self.core.update_mask_only(mask, idx)
            nxt = [idx]
        self.count += 1
        return self.core.unpadded_masks(), nxt
