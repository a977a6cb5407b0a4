"""Synthetic grid-VQA: a deterministic, seedable task where each knob is the bottleneck of some questions.

A 64 px image is an 8x8 grid of 8 px cells, one cell per vision patch (a tiny model learns what is
aligned with the patch grid). Each quadrant has a dominant colour; a few "odd" cells per quadrant
have another colour. Question types, by which knob they stress:

- ``quadrant``  colour of a quadrant: survives 4x4 pooling and needs little depth (cheap everywhere);
- ``cell``      colour of one cell, usually an odd one: pooling mixes it with neighbours (needs the
                high vision tier) but it is a single lookup (shallow);
- ``same``      do two quadrants share a colour: two lookups plus a comparison (needs depth), coarse;
- ``count``     how many quadrants have a colour: aggregation over the image (needs depth), coarse.
"""

from __future__ import annotations

import numpy as np

from grpo_ctrl.data.source import DataError, Split, VQASample, check_split_name

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
    "cyan": (40, 200, 210),
}
QUADRANTS = ("topleft", "topright", "bottomleft", "bottomright")
QUESTION_TYPES = ("quadrant", "cell", "same", "count")
DEFAULT_MIX = {"quadrant": 0.2, "cell": 0.35, "same": 0.2, "count": 0.25}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

GRID = 8
CELL_PX = 8
IMAGE_PX = GRID * CELL_PX
HALF = GRID // 2


def vocabulary() -> list[str]:
    """Every word a question or answer can contain (the tokenizer is built from it)."""
    words = ["what", "colour", "is", "the", "quadrant", "cell", "are", "and", "quadrants", "same"]
    words += ["how", "many", "yes", "no"]
    words += list(COLOURS) + list(QUADRANTS)
    words += [cell_token(r, c) for r in range(GRID) for c in range(GRID)]
    words += [str(i) for i in range(len(QUADRANTS) + 1)]
    return list(dict.fromkeys(words))


def cell_token(row: int, col: int) -> str:
    """One word per cell, so a cell question is a single lookup for the model."""
    return f"r{row}c{col}"


def _quadrant_cells(q: int) -> tuple[slice, slice]:
    r, c = divmod(q, 2)
    return slice(r * HALF, (r + 1) * HALF), slice(c * HALF, (c + 1) * HALF)


class GridSplit(Split):
    def __init__(self, source: GridVQA, name: str, size: int, start: int = 0):
        self.source, self.name, self.size, self.start = source, name, size, start

    def __len__(self) -> int:
        return self.size

    def _get(self, index: int) -> VQASample:
        return self.source.sample(self.name, self.start + index)


class GridVQA:
    """Deterministic generator (a `VQASource`): sample ``i`` of a split depends only on (seed, split, i). Each
    sample's `meta["cells"]` holds the colour index of every grid cell. One gold answer, one word."""

    def __init__(self, seed: int = 0, mix: dict[str, float] | None = None, odd_cells: tuple[int, int] = (2, 4),
                 noise: int = 16):
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"data.mix has unknown question types {sorted(unknown)}; use {list(QUESTION_TYPES)}")
        total = sum(mix.values())
        if total <= 0:
            raise ValueError("data.mix weights must sum to a positive number")
        self.seed = seed
        self.types = list(mix)
        self.probs = np.array([mix[t] for t in self.types], dtype=float) / total
        self.odd_cells = odd_cells
        self.noise = noise
        self.colour_names = list(COLOURS)
        self.palette = np.array(list(COLOURS.values()), dtype=np.int16)

    def sample(self, split: str, index: int) -> VQASample:
        return self.image_questions(split, index, 1)[0]

    def image_questions(self, split: str, index: int, n: int) -> list[VQASample]:
        """Image `index` of `split` with `n` questions about it; the first is `sample(split, index)`."""
        check_split_name(split)
        rng = np.random.default_rng([self.seed, SPLIT_SEEDS[split], index])
        grid, dominant = self._grid(rng)
        image = self._render(rng, grid)
        samples = []
        for _ in range(n):
            qtype = self.types[rng.choice(len(self.types), p=self.probs)]
            question, answer = getattr(self, f"_ask_{qtype}")(rng, grid, dominant)
            samples.append(VQASample(image, question, (answer,), qtype, {"cells": grid}))
        return samples

    def split(self, name: str, size: int | None = None, start: int = 0) -> GridSplit:
        """Samples start .. start+size-1 of split `name`, built when indexed (the generator is unbounded)."""
        check_split_name(name)
        if size is None or size < 1:
            raise DataError(f"grid_vqa split {name!r} needs a size >= 1 (got {size}): the generator is unbounded; "
                            f"set data.{name}_size")
        return GridSplit(self, name, size, start)

    def _grid(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n_col = len(self.colour_names)
        dominant = rng.integers(n_col, size=4)
        # Make "same" questions balanced: half the images repeat a quadrant colour on purpose.
        if rng.random() < 0.5:
            a, b = rng.choice(4, size=2, replace=False)
            dominant[b] = dominant[a]
        grid = np.empty((GRID, GRID), dtype=np.int64)
        for q in range(4):
            rows, cols = _quadrant_cells(q)
            grid[rows, cols] = dominant[q]
            n_odd = rng.integers(self.odd_cells[0], self.odd_cells[1] + 1)
            for flat in rng.choice(HALF * HALF, size=n_odd, replace=False):
                r, c = divmod(int(flat), HALF)
                others = [k for k in range(n_col) if k != dominant[q]]
                grid[rows.start + r, cols.start + c] = rng.choice(others)
        return grid, dominant

    def _render(self, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
        img = self.palette[grid].repeat(CELL_PX, axis=0).repeat(CELL_PX, axis=1)
        img = img + rng.integers(-self.noise, self.noise + 1, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _ask_quadrant(self, rng, grid, dominant):
        q = int(rng.integers(4))
        return f"what colour is the {QUADRANTS[q]} quadrant", self.colour_names[dominant[q]]

    def _ask_cell(self, rng, grid, dominant):
        odd = np.argwhere(grid != np.kron(dominant.reshape(2, 2), np.ones((HALF, HALF), dtype=np.int64)))
        if rng.random() < 0.8:
            r, c = odd[rng.integers(len(odd))]
        else:
            r, c = rng.integers(GRID, size=2)
        return f"what colour is cell {cell_token(r, c)}", self.colour_names[grid[r, c]]

    def _ask_same(self, rng, grid, dominant):
        same_pairs = [(a, b) for a in range(4) for b in range(a + 1, 4) if dominant[a] == dominant[b]]
        diff_pairs = [(a, b) for a in range(4) for b in range(a + 1, 4) if dominant[a] != dominant[b]]
        pool = same_pairs if (same_pairs and (rng.random() < 0.5 or not diff_pairs)) else diff_pairs
        a, b = pool[rng.integers(len(pool))]
        if rng.random() < 0.5:
            a, b = b, a
        answer = "yes" if dominant[a] == dominant[b] else "no"
        return f"are the {QUADRANTS[a]} and {QUADRANTS[b]} quadrants the same colour", answer

    def _ask_count(self, rng, grid, dominant):
        present = sorted(set(int(d) for d in dominant))
        colour = present[rng.integers(len(present))] if rng.random() < 0.85 else int(rng.integers(len(self.palette)))
        count = int((dominant == colour).sum())
        return f"how many quadrants are {self.colour_names[colour]}", str(count)
