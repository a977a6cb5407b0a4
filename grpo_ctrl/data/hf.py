"""A Hugging Face `datasets` dataset as a VQA source (data=hf_vqa): a `save_to_disk` dir, parquet / json / csv
files, or an image folder with a metadata.jsonl, all local.

A split's rows stay in the dataset's memory-mapped Arrow files and its images stay encoded: `split[i]` decodes
the image of sample i only, so a step holds only the images it uses. What is wrong with the config is told in
one line (`DataError`): by `check()`, else the first time a split is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from grpo_ctrl.data.source import SPLITS, DataError, DataSourceConfig, Metric, Split, VQASample, check_split_name

if TYPE_CHECKING:
    import datasets

class DataFormat(StrEnum):
    auto = "auto"
    disk = "disk"
    parquet = "parquet"
    json = "json"
    csv = "csv"
    imagefolder = "imagefolder"


FORMATS = tuple(f.value for f in DataFormat)
EXTENSIONS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class FieldsConfig:
    """hf_vqa: which column holds what."""

    image: str = "image"  # an image feature, image bytes, or a path (relative paths: under data.image_root)
    question: str = "question"
    answers: str = "answers"  # one string, a list of strings, or a list of dicts (VQAv2: [{"answer": ...}, ...])
    answer_key: str = "answer"  # the key of the answer text when `answers` holds dicts
    qtype: str | None = None  # optional question-type column (per-type reports)


DEFAULT_FIELDS = dataclasses.asdict(FieldsConfig())


@dataclass
class HFVQAConfig(DataSourceConfig):
    """data=hf_vqa: a VQA dataset on disk through Hugging Face `datasets`."""

    name: str = "hf_vqa"
    metric: Metric = Metric.vqa  # the official VQA accuracy
    train_size: int | None = None  # null: the whole split; N: N rows drawn with data.seed
    val_size: int | None = 256
    test_size: int | None = 1000
    path: str | None = None  # a `save_to_disk` dir, an imagefolder dir, or the base dir of `data_files`
    format: DataFormat = DataFormat.auto
    data_files: dict[str, Any] | None = None  # parquet / json / csv: dataset split name -> file or list of files
    splits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPLITS))  # framework split -> dataset's
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    image_root: str | None = None  # base of relative image paths (null: data.path)

PATH_HINT = "set data.path=<a save_to_disk dir, an image folder, or the base dir of data.data_files>"


class HFSplit(Split):
    """Rows `rows` (all of them when None) of one split of an `HFVQA`, built into samples when indexed."""

    def __init__(self, source: HFVQA, name: str, rows: np.ndarray | None):
        self.source, self.name, self.rows = source, name, rows
        self._len = len(rows) if rows is not None else len(source.dataset(name))

    def __len__(self) -> int:
        return self._len

    def _get(self, index: int) -> VQASample:
        return self.source.sample(self.name, self._row(index))

    def sample_id(self, index: int) -> str:
        return f"{self.name}/{self._row(index)}"

    def _row(self, index: int) -> int:
        return int(self.rows[index]) if self.rows is not None else index


class HFVQA:
    """A local Hugging Face dataset (a `VQASource`). `splits` maps the framework's split names to the dataset's
    (default train -> train, val -> validation, test -> test), `fields` names the columns (keys and defaults as
    `FieldsConfig`); both override the defaults entry by entry. Each split is opened on first use."""

    def __init__(self, path: str | os.PathLike | None, format: str = "auto", data_files: Any = None,
                 splits: Mapping[str, str] | None = None, fields: Mapping[str, Any] | None = None,
                 image_root: str | os.PathLike | None = None, seed: int = 0):
        if path is None or str(path).strip() == "":
            raise DataError(f"data.path is not set; {PATH_HINT}")
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise DataError(f"data.path={self.path} does not exist; {PATH_HINT}")
        if not self.path.is_dir():
            raise DataError(f"data.path={self.path} is a file, not a dir; set data.path=<its dir> and "
                            f"data.data_files.train={self.path.name}")
        # Entries replace the defaults one by one, as a Hydra override does; None unmaps a split.
        merged = {**DEFAULT_SPLITS, **(splits or {})}
        self.splits = {k: v for k, v in merged.items() if v is not None}
        for key in self.splits:
            if key not in SPLITS:
                raise DataError(f"data.splits.{key} is not a framework split; use keys from {list(SPLITS)}")
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        for key in self.fields:
            if key not in DEFAULT_FIELDS:
                raise DataError(f"data.fields.{key} is unknown; use keys from {list(DEFAULT_FIELDS)}")
        self.image_root = Path(image_root).expanduser() if image_root else self.path
        self.seed = seed
        self.data_files = _split_files(data_files, self.path) if data_files else None
        self._found: dict[str, list[str]] | None = None  # table files under path, by split, when no data_files
        self._folder: datasets.DatasetDict | None = None
        self._opened: dict[str, datasets.Dataset] = {}  # framework split name -> checked dataset
        self.format = self._resolve_format(format)

    @classmethod
    def from_config(cls, data_cfg: Any) -> HFVQA:
        """From the `data` config node (a DictConfig, an `HFVQAConfig`, or a plain mapping)."""
        cfg = _plain(data_cfg)
        return cls(cfg.get("path"), cfg.get("format", "auto"), cfg.get("data_files"), cfg.get("splits"),
                   cfg.get("fields"), cfg.get("image_root"), cfg.get("seed", 0))

    # -- the VQASource interface

    def split(self, name: str, size: int | None = None) -> HFSplit:
        """Every row of split `name` in order, or `size` of them drawn by `seed` (the same on every machine)."""
        check_split_name(name)
        if size is not None and size < 1:
            raise DataError(f"data.{name}_size={size} is not a size; use >= 1, or null for the whole split")
        n = len(self.dataset(name))
        if size is None or size >= n:
            return HFSplit(self, name, None)
        rng = np.random.default_rng([self.seed, SPLITS.index(name)])
        return HFSplit(self, name, np.sort(rng.choice(n, size=size, replace=False)))

    def fingerprint(self) -> dict:
        """The content fingerprint `datasets` keeps for each split that opens, with the field mapping and image root
        (relative image paths resolve there)."""
        splits = {}
        for name in self.splits:
            try:
                splits[name] = self.dataset(name)._fingerprint
            except DataError:  # an unmapped or missing split holds no samples to tell apart
                continue
        return {"source": "hf_vqa", "splits": splits, "fields": self.fields, "image_root": str(self.image_root)}

    def check(self, names: Iterable[str] = SPLITS) -> None:
        """Raise the one-line `DataError` of the first problem in framework splits `names` (those a job needs): an
        unmapped or missing split, an empty one, a missing column, a first row whose cells have unusable types."""
        for name in names:
            check_split_name(name)
            self.sample(name, 0)  # types of the first row, and its image decodes

    def sample(self, name: str, row: int) -> VQASample:
        """Row `row` of framework split `name` as a sample; its image is decoded here."""
        ds, where, f = self.dataset(name), self._where(name), self.fields
        cells = ds[row]
        return VQASample(_decode(self._image_ref(cells[f["image"]], where, row), where, row),
                         _question(cells[f["question"]], f["question"], where, row),
                         _answers(cells[f["answers"]], f["answers"], f["answer_key"], where, row),
                         "" if f["qtype"] is None or cells[f["qtype"]] is None else str(cells[f["qtype"]]),
                         {"index": row})

    def dataset(self, name: str) -> datasets.Dataset:
        """Framework split `name` as a `datasets.Dataset` of the mapped columns, images undecoded; opened and
        checked on first use."""
        if name not in self._opened:
            self._opened[name] = self._open_checked(name)
        return self._opened[name]

    # -- opening

    def _resolve_format(self, format: str) -> str:
        if format not in FORMATS:
            raise DataError(f"data.format={format!r} is unknown; use one of {list(FORMATS)}")
        if format != "auto":
            return format
        if (self.path / "dataset_dict.json").is_file() or (self.path / "state.json").is_file():
            return "disk"
        if self.data_files is None and _has_metadata(self.path):
            return "imagefolder"
        kinds = {EXTENSIONS.get(Path(f).suffix, Path(f).suffix) for fs in self._files().values() for f in fs}
        if len(kinds) != 1 or not kinds <= set(EXTENSIONS.values()):
            raise DataError(f"cannot tell the format of the data files of {self.path} ({sorted(kinds)}); "
                            f"set data.format=<one of {sorted(set(EXTENSIONS.values()))}>")
        return kinds.pop()

    def _files(self, format: str | None = None) -> dict[str, list[str]]:
        """Dataset split name -> data files: `data_files`, else the files of `format` (any table format when None)
        found under `path` by `datasets`' split naming (train.parquet, data/validation-00000-of-00001.parquet)."""
        if self.data_files is not None:
            return self.data_files
        if self._found is None:
            from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

            try:
                found = DataFilesDict.from_patterns(get_data_patterns(str(self.path)), base_path=str(self.path))
            except EmptyDatasetError:
                found = {}
            # Image files match the split patterns too (images/train_0.png): keep only table files.
            self._found = {str(k): [f for f in v if Path(f).suffix in EXTENSIONS] for k, v in found.items()}
        wanted = {ext for ext, kind in EXTENSIONS.items() if format in (None, kind)}
        files = {k: [f for f in v if Path(f).suffix in wanted] for k, v in self._found.items()}
        files = {k: v for k, v in files.items() if v}
        if not files:
            raise DataError(f"data.path={self.path} holds no dataset (no dataset_dict.json, metadata.jsonl, or "
                            f"{'/'.join(EXTENSIONS)} split files); set data.format and data.data_files")
        return files

    def _split_names(self) -> list[str]:
        if self.format == "disk":
            index = self.path / "dataset_dict.json"
            if index.is_file():
                return list(json.loads(index.read_text())["splits"])
            if (self.path / "state.json").is_file():
                return ["train"]
            raise DataError(f"data.path={self.path} is not a save_to_disk dir (no dataset_dict.json or state.json); "
                            f"set data.format=<the format of its files>")
        if self.format == "imagefolder":
            return list(self._image_folder())
        return list(self._files(self.format))

    def _image_folder(self) -> datasets.DatasetDict:
        if self._folder is None:
            import datasets

            with _read_errors(self.path, "the image folder", "imagefolder"), _local_only():
                self._folder = datasets.load_dataset("imagefolder", data_dir=str(self.path))
        return self._folder

    def _load(self, key: str) -> datasets.Dataset:
        import datasets

        if self.format == "imagefolder":
            return self._image_folder()[key]
        with _read_errors(self.path, f"split {key!r}", self.format), _local_only():
            if self.format == "disk":
                single = not (self.path / "dataset_dict.json").is_file()
                return datasets.load_from_disk(str(self.path if single else self.path / key))
            return datasets.load_dataset(self.format, data_files={key: self._files(self.format)[key]}, split=key)

    def _saved_empty(self, key: str) -> bool:
        """An empty split saved to disk has no Arrow file, and `load_from_disk` fails on it."""
        if self.format != "disk":
            return False
        state = self.path / ("state.json" if (self.path / "state.json").is_file() else f"{key}/state.json")
        return state.is_file() and not json.loads(state.read_text()).get("_data_files")

    def _open_checked(self, name: str) -> datasets.Dataset:
        import datasets

        if name not in self.splits:
            raise DataError(f"data.splits has no entry for split {name!r}; set data.splits.{name}=<a split of "
                            f"{self.path}>")
        key = self.splits[name]
        names = self._split_names()
        if key not in names:
            if self.data_files is not None:
                raise DataError(f"data.splits.{name}={key!r} is not a key of data.data_files (keys: {names}); "
                                f"add data.data_files.{key}=<file> or set data.splits.{name}=<key>")
            raise DataError(f"data.splits.{name}={key!r} is not a split of {self.path} (splits: {names}); "
                            f"set data.splits.{name}=<split>")
        ds, where = None if self._saved_empty(key) else self._load(key), self._where(name)
        if ds is None or len(ds) == 0:
            raise DataError(f"{where} is empty; set data.splits.{name}=<a split with rows>")
        columns = list(dict.fromkeys(c for k, c in self.fields.items() if k != "answer_key" and c is not None))
        for key, column in self.fields.items():
            if key != "answer_key" and column is not None and column not in ds.column_names:
                raise DataError(f"data.fields.{key}={column!r} is not a column of {where} "
                                f"(columns: {ds.column_names}); set data.fields.{key}=<column>")
        ds = ds.select_columns(columns)
        image = self.fields["image"]
        if isinstance(ds.features[image], datasets.Image) and ds.features[image].decode:
            ds = ds.cast_column(image, datasets.Image(decode=False))
        self._check_first_row(ds[0], where)
        return ds

    def _check_first_row(self, cells: Mapping[str, Any], where: str) -> None:
        """The cheap checks of row 0: cell types, and that an image path names a file (nothing is decoded)."""
        f = self.fields
        ref = self._image_ref(cells[f["image"]], where, 0)
        if isinstance(ref, Path) and not ref.is_file():
            raise DataError(f"data.fields.image: column {f['image']!r} of {where} names {ref} at row 0, which is "
                            f"not a file; set data.image_root=<the dir relative image paths start from>")
        _question(cells[f["question"]], f["question"], where, 0)
        _answers(cells[f["answers"]], f["answers"], f["answer_key"], where, 0)

    def _where(self, name: str) -> str:
        return f"split {self.splits.get(name, name)!r} of {self.path}"

    def _image_ref(self, value: Any, where: str, row: int) -> bytes | Path:
        """The encoded bytes or the file of an image cell: an image feature's {bytes, path}, bytes, or a path."""
        if isinstance(value, Mapping):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)) and value:
            return bytes(value)
        if isinstance(value, str) and value:
            return Path(value) if os.path.isabs(value) else self.image_root / value
        raise DataError(f"data.fields.image: column {self.fields['image']!r} of {where} holds {_kind(value)} at row "
                        f"{row}; expected an image feature, encoded image bytes, or a file path")


def _decode(ref: bytes | Path, where: str, row: int) -> PIL.Image.Image:
    try:
        with PIL.Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as image:
            return image.convert("RGB")
    except OSError as e:
        reason = "not an image format PIL reads" if isinstance(e, PIL.UnidentifiedImageError) else _first_line(e)
        raise DataError(f"data.fields.image: the image of row {row} of {where} cannot be read ({reason}); "
                        f"fix or drop that row") from e


def _question(value: Any, column: str, where: str, row: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"data.fields.question: column {column!r} of {where} holds {_kind(value)} at row {row}; "
                        f"expected a string")
    return value.strip()


def _answers(value: Any, column: str, key: str, where: str, row: int) -> tuple[str, ...]:
    """A string, a list of strings, a list of dicts (VQAv2: one per annotator, repeats kept), or the dict of lists
    that `datasets` makes of a Sequence of dicts -> the stripped answers."""
    items = value
    if isinstance(value, Mapping):
        items = _key(value, key, column, where)
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        items = [_key(v, key, column, where) for v in value]
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
        raise DataError(f"data.fields.answers: column {column!r} of {where} holds {_kind(value)} at row {row}; "
                        f"expected a string, a list of strings, or a list of dicts with key data.fields.answer_key")
    answers = tuple(a.strip() for a in items if a.strip())
    if not answers:
        raise DataError(f"data.fields.answers: column {column!r} of {where} holds no answer at row {row}; "
                        f"give every row a non-empty answer")
    return answers


def _key(cell: Mapping[str, Any], key: str, column: str, where: str) -> Any:
    if key not in cell:
        raise DataError(f"data.fields.answer_key={key!r} is not a key of the dicts in column {column!r} of {where} "
                        f"(keys: {list(cell)}); set data.fields.answer_key=<key>")
    return cell[key]


def _kind(value: Any) -> str:
    """What a cell holds, for error messages: `int`, `list of int`, `empty list`."""
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"list of {'/'.join(kinds)}" if kinds else "empty list"
    return type(value).__name__


def _split_files(data_files: Any, base: Path) -> dict[str, list[str]]:
    """data.data_files (split -> file, glob or list of them; a bare file or list means split train) -> split ->
    existing files, relative ones under `base`."""
    if not isinstance(data_files, Mapping):
        data_files = {"train": data_files}
    files = {}
    for split, patterns in data_files.items():
        files[str(split)] = []
        for pattern in [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns):
            matches = sorted(glob(str(base / Path(pattern).expanduser()), recursive=True))
            if not matches:
                raise DataError(f"data.data_files.{split}={str(pattern)!r} matches no file under {base}; "
                                f"set data.data_files.{split}=<file or glob>")
            files[str(split)] += matches
    return files


def _has_metadata(path: Path) -> bool:
    """An image folder's metadata.jsonl / metadata.csv at the top or one level down (train/metadata.jsonl)."""
    with os.scandir(path) as entries:  # scandir: no stat per image of a flat folder
        dirs = [path] + [Path(e.path) for e in entries if e.is_dir()]
    return any((d / f).is_file() for d in dirs for f in ("metadata.jsonl", "metadata.csv"))


@contextlib.contextmanager
def _local_only():
    """`load_dataset` pings the hub to count a download even of local files; a local source has no reason to."""
    from datasets import config

    saved, config.HF_UPDATE_DOWNLOAD_COUNTS = config.HF_UPDATE_DOWNLOAD_COUNTS, False
    try:
        yield
    finally:
        config.HF_UPDATE_DOWNLOAD_COUNTS = saved


@contextlib.contextmanager
def _read_errors(path: Path, what: str, format: str):
    try:
        yield
    except DataError:
        raise
    except Exception as e:  # datasets / pyarrow raise many kinds, over many lines
        raise DataError(f"cannot read {what} of {path} as {format} ({type(e).__name__}: {_first_line(e)}); "
                        f"check data.format and data.data_files") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _plain(node: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    return dict(node)
