"""Synthetic grid-VQA: a deterministic, seedable task where each knob is the bottleneck of some questions.

A 64 px image is an 8x8 grid of 8 px cells, one cell per vision patch (a tiny model learns what is
aligned with the patch grid). Each quadrant has a dominant colour; "odd" cells and an odd 2x2 square per
quadrant have another colour, and 2x2 mosaics hold four distinct colours. Question types, by which knob
they stress:

- ``quadrant``  colour of a quadrant: survives 4x4 pooling and needs little depth (cheap everywhere);
- ``cell``      colour of one cell, usually an odd one: pooling mixes it with neighbours (needs the
                high vision tier) but it is a single lookup (shallow); with `cell_mosaics`, 2x2 blocks of four
                distinct colours (one the quadrant's), pooling no longer says which cell has which colour;
- ``square``    colour of a 2x2 square, usually the odd one: survives 2x2 pooling, not 4x4 (the medium tier);
- ``same``      do two quadrants share a colour: two lookups plus a comparison (needs depth), coarse (weighted 0:
                see DEFAULT_MIX);
- ``count``     how many quadrants have a colour: aggregation over the image (needs depth), coarse;
- ``code``      the code a fixed table gives a key in the colour of a quadrant: a large associative mapping
                meant to need expert capacity (top-k); with a learned router it does not (README), coarse;
- ``chain``     follow a quadrant's colour to the quadrant that colour names, `chain_hops` times: a pointer chase
                (needs depth: one hop per block or so), coarse;
- ``relay``     carry a key through a fixed key x colour -> key table (`relay_keys` keys) once per named quadrant,
                `relay_hops` times: sequential lookups no doubling shortcut can skip (each hop is a table lookup
                in an MLP; needs depth), coarse;
- ``pair``      the code a fixed random table gives a pair of keys (`pair_keys` of them; the image plays no
                part): a lookup that no key's embedding can hold, so it has to be computed in the MLPs (meant
                to need expert width);
- ``chaincode`` the code of a key in the colour a ``chain`` ends on: a chase, then a ``code`` lookup on its
                result (two skills in sequence, so it is meant to need the depth of both), coarse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grpo_ctrl.data.source import DataError, DataSourceConfig, Split, VQASample, check_split_name

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
    "cyan": (40, 200, 210),
}
QUADRANTS = ("topleft", "topright", "bottomleft", "bottomright")
# Where the pointer chase of a ``chain`` question goes from a quadrant of each colour.
COLOUR_POINTS_TO = {"red": 0, "green": 1, "blue": 2, "yellow": 3, "purple": 1, "cyan": 2}
QUESTION_TYPES = ("quadrant", "cell", "square", "same", "count", "code", "chain", "relay", "pair", "chaincode")
# `same` is weighted 0: next to six other types the embedded model stayed at chance on it (0.55 after 3,000 steps).
DEFAULT_MIX = {"quadrant": 0.1, "cell": 0.2, "square": 0.15, "same": 0.0, "count": 0.1, "code": 0.1, "chain": 0.35,
               "relay": 0.0, "pair": 0.0, "chaincode": 0.0}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

GRID = 8  # cells per side
CELL_PX = 8  # the embedded VLM's patches are cells
CODE_KEYS = 64
CODES = 32
PAIR_KEYS = 16  # default: pair questions use keys k0..k15, 256 pairs (data.pair_keys, up to CODE_KEYS)
RELAY_KEYS = CODE_KEYS  # default: relay questions carry keys k0..k63 (data.relay_keys)
# The default task shape (`GridVQAConfig`'s defaults): per quadrant, odd cells / odd 2x2 squares / mosaics
# as (min, max), and the hop counts chain questions draw.
ODD_CELLS = (1, 1)
ODD_SQUARES = (1, 1)
CELL_MOSAICS = (1, 1)
CHAIN_HOPS = (2, 3, 4)
RELAY_HOPS = (1, 2, 3)
MAX_CHAIN_HOPS = 6  # the most hops a chain or relay question asks; the number words cover these and the count answers


@dataclass
class GridVQAConfig(DataSourceConfig):
    """data=grid_vqa: the synthetic grid-VQA generator's settings."""

    name: str = "grid_vqa"
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))  # question-type weights
    grid: int = GRID  # cells per side (the embedded VLM has one patch per cell)
    cell_px: int = CELL_PX  # pixels per cell side
    odd_cells: list[int] = field(default_factory=lambda: list(ODD_CELLS))  # odd cells per quadrant (min, max)
    odd_squares: list[int] = field(default_factory=lambda: list(ODD_SQUARES))  # odd 2x2 squares per quadrant
    chain_hops: list[int] = field(default_factory=lambda: list(CHAIN_HOPS))  # hops a chain question draws
    cell_mosaics: list[int] = field(default_factory=lambda: list(CELL_MOSAICS))  # mosaics per quadrant
    relay_hops: list[int] = field(default_factory=lambda: list(RELAY_HOPS))  # lookups a relay question draws
    pair_keys: int = PAIR_KEYS  # keys a pair question draws two of (its table has pair_keys^2 entries)
    relay_keys: int = RELAY_KEYS  # keys a relay question carries (its table has relay_keys x 6 entries)


def vocabulary(grid: int = GRID) -> list[str]:
    """Every word a question or answer can contain (the tokenizer is built from it)."""
    words = ["what", "colour", "is", "the", "quadrant", "cell", "are", "and", "quadrants", "same"]
    words += ["how", "many", "yes", "no"]
    words += list(COLOURS) + list(QUADRANTS)
    words += [cell_token(r, c) for r in range(grid) for c in range(grid)]
    words += ["square"] + [square_token(r, c) for r in range(grid // 2) for c in range(grid // 2)]
    words += [str(i) for i in range(max(len(QUADRANTS), MAX_CHAIN_HOPS) + 1)]
    words += ["code", "of", "in", "which", "steps", "from", "step", "key", "via"]
    words += [key_token(i) for i in range(CODE_KEYS)] + [code_token(i) for i in range(CODES)]
    return list(dict.fromkeys(words))


def cell_token(row: int, col: int) -> str:
    """One word per cell, so a cell question is a single lookup for the model."""
    return f"r{row}c{col}"


def square_token(row: int, col: int) -> str:
    """One word per aligned 2x2 square of cells."""
    return f"s{row}c{col}"


def key_token(i: int) -> str:
    return f"k{i}"


def code_token(i: int) -> str:
    return f"z{i}"


def _quadrant_cells(q: int, half: int) -> tuple[slice, slice]:
    r, c = divmod(q, 2)
    return slice(r * half, (r + 1) * half), slice(c * half, (c + 1) * half)


class GridSplit(Split):
    def __init__(self, source: GridVQA, name: str, size: int, start: int = 0):
        self.source, self.name, self.size, self.start = source, name, size, start

    def __len__(self) -> int:
        return self.size

    def _get(self, index: int) -> VQASample:
        return self.source.sample(self.name, self.start + index)

    def sample_id(self, index: int) -> str:
        return f"{self.name}/{self.start + index}"


class GridVQA:
    """Deterministic generator (a `VQASource`): sample ``i`` of a split depends only on (seed, split, i). Each
    sample's `meta["cells"]` holds the colour index of every grid cell. One gold answer, one word."""

    def __init__(self, seed: int = 0, mix: dict[str, float] | None = None, odd_cells: tuple[int, int] = ODD_CELLS,
                 noise: int = 16, grid: int = GRID, cell_px: int = CELL_PX, odd_squares: tuple[int, int] = ODD_SQUARES,
                 chain_hops: tuple[int, ...] = CHAIN_HOPS, cell_mosaics: tuple[int, int] = CELL_MOSAICS,
                 relay_hops: tuple[int, ...] = RELAY_HOPS, pair_keys: int = PAIR_KEYS,
                 relay_keys: int = RELAY_KEYS):
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(QUESTION_TYPES)
        if unknown:
            raise DataError(f"data.mix has unknown question types {sorted(unknown)}; use {list(QUESTION_TYPES)}")
        total = sum(mix.values())
        if total <= 0:
            raise DataError("data.mix weights must sum to a positive number")
        if grid < 2 or grid % 2:
            raise DataError(f"data.grid={grid}: use an even number of cells per side")
        if max(odd_squares) + max(cell_mosaics) > 0 and grid % 4:
            raise DataError(f"data.odd_squares and data.cell_mosaics need data.grid divisible by 4 (2x2 blocks tile "
                            f"quadrants); got {grid}")
        blocks = (grid // 4) ** 2  # aligned 2x2 blocks per quadrant
        if max(odd_squares) + max(cell_mosaics) > blocks:
            raise DataError(f"data.odd_squares {list(odd_squares)} + data.cell_mosaics {list(cell_mosaics)}: a "
                            f"quadrant has only {blocks} 2x2 blocks")
        if max(odd_cells) > (grid // 2) ** 2 - 4 * (max(odd_squares) + max(cell_mosaics)):
            raise DataError(f"data.odd_cells {list(odd_cells)}: more odd cells than a quadrant has free cells")
        for name, hops in (("chain_hops", chain_hops), ("relay_hops", relay_hops)):
            if not hops or min(hops) < 1 or max(hops) > MAX_CHAIN_HOPS:
                raise DataError(f"data.{name}={list(hops)}: use hop counts from 1 to {MAX_CHAIN_HOPS}")
        for name, keys in (("pair_keys", pair_keys), ("relay_keys", relay_keys)):
            if not 2 <= keys <= CODE_KEYS:
                raise DataError(f"data.{name}={keys}: use 2 to {CODE_KEYS} keys")
        self.seed = seed
        self.chain_hops = tuple(int(h) for h in chain_hops)
        self.relay_hops = tuple(int(h) for h in relay_hops)
        self.grid, self.half, self.cell_px = grid, grid // 2, cell_px
        self.odd_squares, self.cell_mosaics = odd_squares, cell_mosaics
        self.types = list(mix)
        self.probs = np.array([mix[t] for t in self.types], dtype=float) / total
        self.odd_cells = odd_cells
        self.noise = noise
        self.colour_names = list(COLOURS)
        self.palette = np.array(list(COLOURS.values()), dtype=np.int16)
        # The task's fixed key x colour -> code table (the same in every split; a function of the seed).
        self.code_table = np.random.default_rng([seed, 99]).integers(CODES, size=(CODE_KEYS, len(COLOURS)))
        self.relay_table = np.random.default_rng([seed, 98]).integers(relay_keys, size=(relay_keys, len(COLOURS)))
        self.pair_table = np.random.default_rng([seed, 97]).integers(CODES, size=(pair_keys, pair_keys))
        self.points_to = np.array([COLOUR_POINTS_TO[c] for c in self.colour_names])
        self._settings = {"source": "grid_vqa", "seed": seed, "mix": mix, "odd_cells": list(odd_cells), "noise": noise,
                          "grid": grid, "cell_px": cell_px, "odd_squares": list(odd_squares),
                          "chain_hops": list(self.chain_hops), "cell_mosaics": list(cell_mosaics),
                          "relay_hops": list(self.relay_hops), "pair_keys": pair_keys, "relay_keys": relay_keys}

    @classmethod
    def from_config(cls, cfg: Any) -> GridVQA:
        """From a `data` config node of data=grid_vqa (a `GridVQAConfig` or its DictConfig)."""
        return cls(seed=cfg.seed, mix=dict(cfg.mix), grid=cfg.grid, cell_px=cfg.cell_px, odd_cells=tuple(cfg.odd_cells),
                   odd_squares=tuple(cfg.odd_squares), chain_hops=tuple(cfg.chain_hops),
                   cell_mosaics=tuple(cfg.cell_mosaics), relay_hops=tuple(cfg.relay_hops), pair_keys=cfg.pair_keys,
                   relay_keys=cfg.relay_keys)

    def fingerprint(self) -> dict:
        return dict(self._settings)

    def sample(self, split: str, index: int) -> VQASample:
        return self.image_questions(split, index, 1)[0]

    def image_questions(self, split: str, index: int, n: int) -> list[VQASample]:
        """Image `index` of `split` with `n` questions about it; the first is `sample(split, index)`."""
        check_split_name(split)
        rng = np.random.default_rng([self.seed, SPLIT_SEEDS[split], index])
        grid, dominant, odd = self._grid(rng)
        image = self._render(rng, grid)
        samples = []
        for _ in range(n):
            qtype = self.types[rng.choice(len(self.types), p=self.probs)]
            question, answer = getattr(self, f"_ask_{qtype}")(rng, grid, dominant, odd)
            samples.append(VQASample(image, question, (answer,), qtype, {"cells": grid}))
        return samples

    def split(self, name: str, size: int | None = None, start: int = 0) -> GridSplit:
        """Samples start .. start+size-1 of split `name`, built when indexed (the generator is unbounded)."""
        check_split_name(name)
        if size is None or size < 1:
            raise DataError(f"grid_vqa split {name!r} needs a size >= 1 (got {size}): the generator is unbounded; "
                            f"set data.{name}_size")
        return GridSplit(self, name, size, start)

    def _grid(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Cell colours, quadrant colours, and where the odd squares and odd single cells are."""
        n_col = len(self.colour_names)
        dominant = rng.integers(n_col, size=4)
        # Make "same" questions balanced: half the images repeat a quadrant colour on purpose.
        if rng.random() < 0.5:
            a, b = rng.choice(4, size=2, replace=False)
            dominant[b] = dominant[a]
        grid = np.empty((self.grid, self.grid), dtype=np.int64)
        half = self.half
        squares = np.zeros((half, half), dtype=bool)  # on the grid of 2x2 squares
        mosaics = np.zeros_like(squares)
        single = np.zeros_like(grid, dtype=bool)
        for q in range(4):
            rows, cols = _quadrant_cells(q, half)
            grid[rows, cols] = dominant[q]
            others = [k for k in range(n_col) if k != dominant[q]]
            taken = np.zeros((half, half), dtype=bool)
            if max(self.odd_squares) > 0:
                n_sq = rng.integers(self.odd_squares[0], self.odd_squares[1] + 1)
                for flat in rng.choice((half // 2) ** 2, size=n_sq, replace=False):
                    r, c = divmod(int(flat), half // 2)
                    grid[rows.start + 2 * r:rows.start + 2 * r + 2, cols.start + 2 * c:cols.start + 2 * c + 2] = \
                        rng.choice(others)
                    squares[rows.start // 2 + r, cols.start // 2 + c] = True
                    taken[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
            if max(self.cell_mosaics) > 0:  # (draws nothing when off: the streams stay those of a mosaic-free task)
                n_mo = rng.integers(self.cell_mosaics[0], self.cell_mosaics[1] + 1)
                per_side = half // 2
                blocks = [b for b in range(per_side ** 2) if not taken[2 * (b // per_side), 2 * (b % per_side)]]
                for flat in rng.choice(blocks, size=n_mo, replace=False):
                    r, c = divmod(int(flat), per_side)
                    r0, c0 = rows.start + 2 * r, cols.start + 2 * c
                    block = np.append(rng.choice(others, size=3, replace=False), dominant[q])
                    grid[r0:r0 + 2, c0:c0 + 2] = rng.permutation(block).reshape(2, 2)
                    single[r0:r0 + 2, c0:c0 + 2] = True
                    mosaics[rows.start // 2 + r, cols.start // 2 + c] = True
                    taken[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
            free = np.flatnonzero(~taken.ravel())
            n_odd = rng.integers(self.odd_cells[0], self.odd_cells[1] + 1)
            for flat in rng.choice(free, size=n_odd, replace=False):
                r, c = divmod(int(flat), half)
                grid[rows.start + r, cols.start + c] = rng.choice(others)
                single[rows.start + r, cols.start + c] = True
        return grid, dominant, {"cells": single, "squares": squares, "mosaics": mosaics}

    def _render(self, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
        img = self.palette[grid].repeat(self.cell_px, axis=0).repeat(self.cell_px, axis=1)
        img = img + rng.integers(-self.noise, self.noise + 1, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _ask_quadrant(self, rng, grid, dominant, odd):
        q = int(rng.integers(4))
        return f"what colour is the {QUADRANTS[q]} quadrant", self.colour_names[dominant[q]]

    def _ask_cell(self, rng, grid, dominant, odd):
        cells = np.argwhere(odd["cells"])
        if len(cells) and rng.random() < 0.8:
            r, c = cells[rng.integers(len(cells))]
        else:
            r, c = rng.integers(self.grid, size=2)
        return f"what colour is cell {cell_token(r, c)}", self.colour_names[grid[r, c]]

    def _ask_square(self, rng, grid, dominant, odd):
        squares = np.argwhere(odd["squares"])
        if len(squares) and rng.random() < 0.8:
            r, c = squares[rng.integers(len(squares))]
        elif odd["mosaics"].any():  # a mosaic has no majority colour: never asked as a square
            plain = np.argwhere(~odd["mosaics"])
            r, c = plain[rng.integers(len(plain))]
        else:
            r, c = rng.integers(self.half, size=2)
        colours = np.bincount(grid[2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel(), minlength=len(self.colour_names))
        return f"what colour is square {square_token(r, c)}", self.colour_names[int(colours.argmax())]

    def _ask_same(self, rng, grid, dominant, odd):
        same_pairs = [(a, b) for a in range(4) for b in range(a + 1, 4) if dominant[a] == dominant[b]]
        diff_pairs = [(a, b) for a in range(4) for b in range(a + 1, 4) if dominant[a] != dominant[b]]
        pool = same_pairs if (same_pairs and (rng.random() < 0.5 or not diff_pairs)) else diff_pairs
        a, b = pool[rng.integers(len(pool))]
        if rng.random() < 0.5:
            a, b = b, a
        answer = "yes" if dominant[a] == dominant[b] else "no"
        return f"are the {QUADRANTS[a]} and {QUADRANTS[b]} quadrants the same colour", answer

    def _ask_count(self, rng, grid, dominant, odd):
        present = sorted(set(int(d) for d in dominant))
        colour = present[rng.integers(len(present))] if rng.random() < 0.85 else int(rng.integers(len(self.palette)))
        count = int((dominant == colour).sum())
        return f"how many quadrants are {self.colour_names[colour]}", str(count)

    def _ask_code(self, rng, grid, dominant, odd):
        key, q = int(rng.integers(CODE_KEYS)), int(rng.integers(4))
        return (f"what is the code of {key_token(key)} in the {QUADRANTS[q]} quadrant",
                code_token(int(self.code_table[key, dominant[q]])))

    def _chase(self, rng, dominant) -> tuple[str, int]:
        """A random chain: its words ("2 steps from the topleft quadrant") and the colour index it ends on."""
        q, hops = int(rng.integers(4)), int(rng.choice(self.chain_hops))
        at = q
        for _ in range(hops):
            at = int(self.points_to[dominant[at]])
        step = "step" if hops == 1 else "steps"
        return f"{hops} {step} from the {QUADRANTS[q]} quadrant", int(dominant[at])

    def _ask_chain(self, rng, grid, dominant, odd):
        words, colour = self._chase(rng, dominant)
        return f"which colour is {words}", self.colour_names[colour]

    def _ask_chaincode(self, rng, grid, dominant, odd):
        key = int(rng.integers(CODE_KEYS))
        words, colour = self._chase(rng, dominant)
        return f"what is the code of {key_token(key)} {words}", code_token(int(self.code_table[key, colour]))

    def _ask_relay(self, rng, grid, dominant, odd):
        key, hops = int(rng.integers(len(self.relay_table))), int(rng.choice(self.relay_hops))
        via = rng.integers(4, size=hops)
        at = key
        for q in via:
            at = int(self.relay_table[at, dominant[q]])
        return f"which key from {key_token(key)} via {' '.join(QUADRANTS[q] for q in via)}", key_token(at)

    def _ask_pair(self, rng, grid, dominant, odd):
        a, b = (int(k) for k in rng.integers(len(self.pair_table), size=2))
        return f"what is the code of {key_token(a)} and {key_token(b)}", code_token(int(self.pair_table[a, b]))
