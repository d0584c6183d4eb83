"""Noise blocks: the documented draw order, batch cutting, and parallel drawing with equal values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothviz import noise

SHAPE = (1, 3, 2)


def documented_rows(nums, seeds, generator=None) -> tuple[torch.Tensor, list[int]]:
    """Every row of the stream drawn block by block as the module docstring states, and its point."""
    g = generator if generator is not None else torch.Generator()
    rows, owners = [], []
    for p, num in enumerate(nums):
        for b, k in enumerate(noise.block_sizes(num)):
            if seeds is not None:
                g.manual_seed(noise.derive_seed(seeds[p], b))
            rows.append(torch.randn((k, *SHAPE), generator=g))
            owners += [p] * k
    return torch.cat(rows), owners


def stream_rows(stream: noise.NoiseStream) -> tuple[torch.Tensor, list[int], list[int]]:
    """Concatenate a stream's batches (copied: a batch is only valid until the next one)."""
    parts, owners, sizes = [], [], []
    for segments, batch in stream.batches():
        parts.append(batch.clone())
        sizes.append(batch.shape[0])
        assert sum(k for _, k in segments) == batch.shape[0]
        assert all(a[0] != b[0] for a, b in zip(segments, segments[1:])), "segments of a point are merged"
        for p, k in segments:
            owners += [p] * k
    return torch.cat(parts), owners, sizes


def test_block_sizes():
    assert noise.block_sizes(0) == []
    assert noise.block_sizes(noise.NOISE_BLOCK) == [noise.NOISE_BLOCK]
    assert noise.block_sizes(2 * noise.NOISE_BLOCK + 5) == [noise.NOISE_BLOCK] * 2 + [5]


def test_derive_seed_is_stable_and_distinct():
    assert noise.derive_seed(1, 2, 3) == noise.derive_seed(1, 2, 3)
    assert len({noise.derive_seed(0, i, s) for i in range(50) for s in range(3)}) == 150
    assert all(0 <= noise.derive_seed(i) < 2**63 for i in range(100))


@pytest.mark.parametrize("batch_rows", [1, 7, 100, 256, 1024, 1500, 5000, 10**6])
def test_stream_equals_documented_order(batch_rows):
    nums = [100, 2 * noise.NOISE_BLOCK + 300, noise.NOISE_BLOCK, 1, 3000]
    seeds = [5, 6, 7, 8, 9]
    want, want_owners = documented_rows(nums, seeds)
    stream = noise.NoiseStream(nums, SHAPE, batch_rows, torch.Generator(), seeds)
    got, owners, sizes = stream_rows(stream)
    assert torch.equal(got, want)
    assert owners == want_owners
    assert all(s == min(batch_rows, sum(nums)) for s in sizes[:-1]) and sum(sizes) == sum(nums)
    assert stream.cache == {}, "every block drawn on its own was consumed and released"


@settings(max_examples=40, deadline=None)
@given(nums=st.lists(st.integers(0, 2600), min_size=1, max_size=5), batch_rows=st.integers(1, 3000),
       seeded=st.booleans())
def test_any_batching_gives_the_documented_stream(nums, batch_rows, seeded):
    if sum(nums) == 0:
        return
    seeds = list(range(10, 10 + len(nums))) if seeded else None
    want, want_owners = documented_rows(nums, seeds, torch.Generator().manual_seed(1))
    got, owners, _ = stream_rows(noise.NoiseStream(nums, SHAPE, batch_rows, torch.Generator().manual_seed(1), seeds))
    assert torch.equal(got, want) and owners == want_owners
