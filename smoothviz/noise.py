"""The engine's Gaussian noise: independently seeded blocks, cut into batches.

Each point's samples come in blocks of ``NOISE_BLOCK`` rows. Block b of a point with seed s is
``torch.randn((rows, *shape))`` from a generator reseeded with ``derive_seed(s, b)``; without
seeds the blocks are drawn one after another from the caller's generator. The blocks of all
points, in order, form one stream of rows that is cut into batches of ``batch_rows``.

Why blocks: a point's noise then depends only on its seed, never on the batch size or on which
points share a batch, so a resumed run reproduces a clean run exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NOISE_BLOCK = 1024  # rows of noise per independently seeded block


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. seed, idx, stage, block); stable across runs and hosts."""
    text = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def block_sizes(num: int) -> list[int]:
    """Rows of each noise block of one point's ``num`` samples."""
    full, rest = divmod(int(num), NOISE_BLOCK)
    return [NOISE_BLOCK] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Block:
    """A block of point ``point``: ``rows`` rows from row ``start`` of the stream, drawn with ``seed``."""

    point: int
    rows: int
    start: int
    seed: int | None

    @property
    def stop(self) -> int:
        return self.start + self.rows


class NoiseStream:
    """The noise of several points as batches of rows, in the documented block order.

    ``batches()`` yields ``(segments, noise)`` per batch: ``segments`` lists (point, rows) in
    order (consecutive rows of one point merged), ``noise`` is a [rows, *shape] tensor valid
    until the next batch is requested. A block that lies inside one batch is drawn straight into
    the batch buffer; a block cut by a batch boundary is drawn on its own when first needed, and
    a batch lying wholly inside it reads it without a copy. ``first_blocks[p]`` numbers point
    p's first block (default 0), so a run of a point's blocks can be drawn on its own.
    """

    def __init__(
        self,
        nums: Sequence[int],
        shape: tuple[int, ...],
        batch_rows: int,
        generator: torch.Generator,
        seeds: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        first_blocks: Sequence[int] | None = None,
    ) -> None:
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        self.generator = generator
        self.blocks: list[Block] = []
        start = 0
        for p, num in enumerate(nums):
            first = 0 if first_blocks is None else int(first_blocks[p])
            for b, rows in enumerate(block_sizes(num), start=first):
                seed = None if seeds is None else derive_seed(seeds[p], b)
                self.blocks.append(Block(p, rows, start, seed))
                start += rows
        self.total = start
        self.batch_rows = max(1, min(int(batch_rows), self.total))
        self.buffer = torch.empty((self.batch_rows, *self.shape), device=self.device, dtype=dtype)
        self.cache: dict[int, Tensor] = {}

    def _is_cut(self, block: Block) -> bool:
        """Whether a batch boundary falls inside ``block``."""
        return block.start // self.batch_rows != (block.stop - 1) // self.batch_rows

    def _draw(self, block: Block, out: Tensor) -> None:
        if block.seed is not None:
            self.generator.manual_seed(block.seed)
        torch.randn(out.shape, generator=self.generator, out=out)

    def batches(self) -> Iterator[tuple[list[tuple[int, int]], Tensor]]:
        """Each batch's (point, rows) segments and its noise, in stream order."""
        first = 0  # first block not yet wholly consumed
        for lo in range(0, self.total, self.batch_rows):
            hi = min(lo + self.batch_rows, self.total)
            last = first
            while last < len(self.blocks) and self.blocks[last].start < hi:
                last += 1
            for j in range(first, last):  # in block order, so unseeded blocks draw in sequence
                block = self.blocks[j]
                if not self._is_cut(block):
                    self._draw(block, self.buffer[block.start - lo:block.stop - lo])
                elif j not in self.cache:
                    self.cache[j] = torch.empty((block.rows, *self.shape), device=self.device, dtype=self.dtype)
                    self._draw(block, self.cache[j])
            yield self._segments(first, last, lo, hi), self._noise(first, last, lo, hi)
            for j in range(first, last):
                if self.blocks[j].stop <= hi:
                    self.cache.pop(j, None)
            while first < last and self.blocks[first].stop <= hi:
                first += 1

    def _segments(self, first: int, last: int, lo: int, hi: int) -> list[tuple[int, int]]:
        segments: list[tuple[int, int]] = []
        for block in self.blocks[first:last]:
            rows = min(block.stop, hi) - max(block.start, lo)
            if segments and segments[-1][0] == block.point:
                segments[-1] = (block.point, segments[-1][1] + rows)
            else:
                segments.append((block.point, rows))
        return segments

    def _noise(self, first: int, last: int, lo: int, hi: int) -> Tensor:
        if last - first == 1 and first in self.cache:
            block = self.blocks[first]
            return self.cache[first][lo - block.start:hi - block.start]
        for j in range(first, last):
            if j in self.cache:
                block = self.blocks[j]
                a, b = max(block.start, lo), min(block.stop, hi)
                self.buffer[a - lo:b - lo].copy_(self.cache[j][a - block.start:b - block.start])
        return self.buffer[:hi - lo]
