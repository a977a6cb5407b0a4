"""The data-source interface: a VQA dataset is a set of named splits, each a lazily indexable sequence of samples.

Every consumer (train.py, experiments, evaluation) reads data only through `VQASource.split(name, size)`; the
split names are the framework's (train / val / test), each source maps them to its own. A split holds no
images: `split[i]` builds sample i when asked, so a step holds only the samples it uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from omegaconf import MISSING

SPLITS = ("train", "val", "test")


class Metric(StrEnum):
    """The answer score behind the reward and the reports (`grpo_ctrl.data.metrics`)."""

    vqa = "vqa"
    exact_match = "exact_match"
    anls = "anls"


@dataclass
class DataSourceConfig:
    """What every data source's config has (`data=<option>`; each source's schema adds its own keys)."""

    name: str = MISSING  # the option: set by its schema
    seed: int = 0  # grid_vqa: the generator; hf_vqa: which subset a size draws
    metric: Metric = Metric.exact_match
    train_size: int | None = 2048  # distinct training prompts (hf_vqa: null = the whole split)
    val_size: int | None = 192  # validation prompts, each evaluated at every validation budget
    test_size: int | None = 1024  # held-out prompts (evaluation only)


class DataError(ValueError):
    """A data source or its field mapping cannot give samples (one line: what, where, how to fix)."""


@dataclass(frozen=True)
class VQASample:
    image: Any = field(compare=False, repr=False)  # a PIL image or an (H, W, 3) uint8 array, any size
    question: str
    answers: tuple[str, ...]  # gold answers, one per annotator (repeats count, as in VQAv2's ten)
    qtype: str = ""  # question type / category, for per-type reports ("" when the source has none)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.answers:
            raise DataError(f"sample {self.question!r} has no gold answer")

    @property
    def answer(self) -> str:
        """The most frequent gold answer (the first of the tied ones): the target of dense rewards and pretraining."""
        return Counter(self.answers).most_common(1)[0][0]


class LazySequence(Sequence):
    """Items built when indexed: subclasses give `__len__` and `_get(i)`; slices give lists."""

    def _get(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._get(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} of a sequence of {len(self)}")
        return self._get(index % len(self))

    def __iter__(self) -> Iterator:
        return (self._get(i) for i in range(len(self)))


class Split(LazySequence):
    """A lazily indexable split of samples (`_get(i)` returns a `VQASample`; `sample_id(i)` names it stably within
    its source: the same sample has the same id in every process and every split size)."""

    def _get(self, index: int) -> VQASample:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        raise NotImplementedError


@runtime_checkable
class VQASource(Protocol):
    """A VQA dataset: `split(name, size)` for name in SPLITS; `size` None means all of it (where that is finite)."""

    def split(self, name: str, size: int | None = None) -> Split:
        ...

    def fingerprint(self) -> dict:
        """What determines the samples (generator settings, or the dataset's content fingerprint and field mapping):
        a sample's id is unique within one fingerprint."""
        ...


def check_split_name(name: str) -> None:
    if name not in SPLITS:
        raise DataError(f"split={name!r} is unknown; use one of {list(SPLITS)}")
