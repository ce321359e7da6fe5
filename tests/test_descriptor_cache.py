"""The built-in backend describes a reference patch once however often it is asked (the first tile
level asks once per coarse hypothesis, --search auto's full pass again), with the same result."""

import numpy as np
import torch

from promptmid_cli.descriptors.base import PatchPair
from promptmid_cli.descriptors.builtin import BuiltinDescriptor, DescriptorCache


def _pair(seed, ref=None):
    g = torch.Generator().manual_seed(seed)
    r = ref if ref is not None else torch.rand(40, 40, generator=g)
    m = torch.rand(56, 56, generator=g)
    return PatchPair(r, torch.ones(40, 40, dtype=torch.bool), m, torch.ones(56, 56, dtype=torch.bool), "optical", "sar")


def test_repeated_reference_patches_are_described_once_with_the_same_descriptors(monkeypatch):
    shared = torch.rand(40, 40, generator=torch.Generator().manual_seed(9))
    # equal content in other tensors: asked for four times
    pairs = [_pair(1, shared), _pair(2), _pair(3, shared.clone()), _pair(5, shared.clone()), _pair(6, shared.clone())]
    plain = [BuiltinDescriptor().describe_pairs([p])[0] for p in pairs]  # a fresh backend (cache) each
    be = BuiltinDescriptor()
    calls = []
    orig = be.describe_image
    monkeypatch.setattr(be, "describe_image", lambda im, m, mod: calls.append(tuple(im.shape)) or orig(im, m, mod))
    got = be.describe_pairs(pairs[:2]) + be.describe_pairs(pairs[2:3]) + be.describe_pairs(pairs[3:])
    # the shared reference is kept from its second request on (a patch asked for once is not kept)
    assert calls.count((40, 40)) == 3  # the shared one twice, the other reference once
    assert calls.count((56, 56)) == 5  # moving patches are never reused
    for (r0, m0), (r1, m1) in zip(plain, got):
        assert np.array_equal(r0, r1) and np.array_equal(m0, m1)
    # a different mask is a different patch
    p = _pair(4, shared)
    p.ref_mask = p.ref_mask.clone()
    p.ref_mask[:5] = False
    calls.clear()
    be.describe_pairs([p])
    be.describe_pairs([p])
    assert calls.count((40, 40)) == 2
    be.release()
    assert be._refs.nbytes == 0


def test_the_cache_keeps_its_byte_budget_dropping_the_least_recently_used():
    c = DescriptorCache(budget=3 * 400)
    ks = [DescriptorCache.key(torch.full((10, 10), float(i)), torch.ones(10, 10, dtype=torch.bool), "sar") for i in range(4)]
    c.put(ks[0], np.zeros(100, np.float32))
    assert c.get(ks[0]) is None  # a first request is not kept
    for k in ks[:3]:
        c.put(k, np.zeros(100, np.float32))  # 400 bytes each (ks[0] now for the second time)
    for k in ks[1:3]:
        c.put(k, np.zeros(100, np.float32))
    assert c.get(ks[0]) is not None  # now the most recently used
    c.put(ks[3], np.zeros(100, np.float32))
    c.put(ks[3], np.zeros(100, np.float32))
    c.put(ks[3], np.zeros(100, np.float32))  # again (the same patch twice in one batch): not counted twice
    assert c.nbytes == 1200 and c.get(ks[1]) is None and c.get(ks[0]) is not None and c.get(ks[3]) is not None
    assert c.get(ks[2]) is not None  # not pushed out by a double count of ks[3]
    c.put("big", np.zeros(1000, np.float32))
    c.put("big", np.zeros(1000, np.float32))  # larger than the budget: returned, not kept
    assert c.get("big") is None and c.nbytes == 1200
