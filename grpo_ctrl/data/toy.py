"""A small, learnable VQA dataset of coloured shapes, written in any format `HFVQA` reads: the example of turning
images + questions + answers into a Hugging Face dataset, and the test data of data=hf_vqa.

Each image (40..120 px a side, rarely square) is a plain background with one or two shapes; the questions ask
what is in it ("red circle"), a shape's colour, or how many shapes there are ("two shapes"). Three to ten
annotators answer each question: most give the canonical answer, a few a variant ("2", "circle") or a mistake.

    from grpo_ctrl.data.toy import write_toy_vqa
    write_toy_vqa("toy_vqa", format="disk")    # then: data=hf_vqa data.path=toy_vqa
"""

from __future__ import annotations

import io
import json
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 215), "yellow": (235, 205, 30)}
BACKGROUNDS = [(250, 250, 250), (200, 200, 200), (30, 30, 30)]
SHAPES = ("circle", "square", "triangle")
NUMBERS = {1: ("one", "shape"), 2: ("two", "shapes")}
FORMATS = ("disk", "parquet", "jsonl", "json", "csv", "imagefolder")  # json: an alias of jsonl


def toy_sample(seed: int, split: str, index: int) -> dict[str, Any]:
    """Sample `index` of `split`: {"image": PIL image, "question", "answers": one per annotator, "qtype"}. It
    depends only on (seed, split, index)."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    width, height = (int(v) for v in rng.integers(40, 121, size=2))
    shapes = [(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))])
              for _ in range(rng.integers(1, 3))]
    image = _draw(rng, width, height, shapes)
    qtype = ("shape", "colour", "count")[rng.integers(3)]
    question, answer, variants = _ask(rng, qtype, shapes)
    return {"image": image, "question": question, "answers": _annotate(rng, answer, variants), "qtype": qtype}


def _draw(rng: np.random.Generator, width: int, height: int, shapes: list[tuple[str, str]]) -> Image.Image:
    """Shape k of n sits in the k-th of n equal vertical strips (so "left" / "right" mean something)."""
    image = Image.new("RGB", (width, height), BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    draw = ImageDraw.Draw(image)
    strip = width / len(shapes)
    for k, (shape, colour) in enumerate(shapes):
        size = min(strip, height) * rng.uniform(0.5, 0.8)
        x0 = k * strip + rng.uniform(0, strip - size)
        y0 = rng.uniform(0, height - size)
        box = [x0, y0, x0 + size, y0 + size]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(x0 + size / 2, y0), (x0 + size, y0 + size), (x0, y0 + size)], fill=COLOURS[colour])
    return image


def _ask(rng: np.random.Generator, qtype: str, shapes: list[tuple[str, str]]) -> tuple[str, str, list[str]]:
    """(question, canonical answer, variants an annotator may give instead)."""
    k = int(rng.integers(len(shapes)))
    shape, colour = shapes[k]
    where = "" if len(shapes) == 1 else (" on the left", " on the right")[k]
    if qtype == "shape":
        return f"what shape is{where or ' in the image'}", f"{colour} {shape}", [shape, f"a {colour} {shape}"]
    if qtype == "colour":
        wrong = next(c for c in COLOURS if c != colour)
        return f"what colour is the shape{where}", colour, [f"{colour} {shape}", wrong]
    word, noun = NUMBERS[len(shapes)]
    return "how many shapes are there", f"{word} {noun}", [word, str(len(shapes))]


def _annotate(rng: np.random.Generator, answer: str, variants: list[str]) -> list[str]:
    """3 to 10 annotators; fewer than half of them give a variant, so the canonical answer is the majority."""
    n = int(rng.integers(3, 11))
    n_variants = min(int(rng.binomial(n, 0.25)), (n - 1) // 2)
    answers = [answer] * (n - n_variants) + [variants[i] for i in rng.integers(len(variants), size=n_variants)]
    return [answers[i] for i in rng.permutation(n)]


def write_toy_vqa(path: str | Path, sizes: Mapping[str, int] | None = None, format: str = "disk",
                  seed: int = 0) -> Path:
    """Write splits `sizes` (default train 64, validation 16, test 16) to `path` in `format`:

    - disk:        `DatasetDict.save_to_disk`: an Image feature, answers as VQAv2 [{"answer": ...}, ...]
    - parquet:     {split}.parquet, the same columns
    - jsonl:       {split}.jsonl with image paths into images/, answers as a list of strings
    - csv:         {split}.csv with image paths into images/, the majority answer as one string
    - imagefolder: {split}/*.png + {split}/metadata.jsonl (file_name, question, answers as dicts, qtype)
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; use one of {list(FORMATS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sizes = {"train": 64, "validation": 16, "test": 16} if sizes is None else sizes
    splits = {split: [toy_sample(seed, split, i) for i in range(n)] for split, n in sizes.items()}
    if format in ("disk", "parquet"):
        _write_tables(path, splits, format)
    elif format == "imagefolder":
        for split, samples in splits.items():
            (path / split).mkdir(exist_ok=True)
            rows = []
            for i, s in enumerate(samples):
                s["image"].save(path / split / f"{i}.png")
                rows.append({"file_name": f"{i}.png", **_text(s), "answers": [{"answer": a} for a in s["answers"]]})
            _write_jsonl(path / split / "metadata.jsonl", rows)
    else:
        (path / "images").mkdir(exist_ok=True)
        for split, samples in splits.items():
            rows = []
            for i, s in enumerate(samples):
                s["image"].save(path / "images" / f"{split}-{i}.png")
                rows.append({"image": f"images/{split}-{i}.png", **_text(s)})
            if format == "csv":
                _write_csv(path / f"{split}.csv", rows)
            else:
                _write_jsonl(path / f"{split}.jsonl", rows)
    return path


def _text(sample: dict[str, Any]) -> dict[str, Any]:
    return {"question": sample["question"], "answers": sample["answers"], "qtype": sample["qtype"]}


def _write_tables(path: Path, splits: dict[str, list[dict[str, Any]]], format: str) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.List({"answer": datasets.Value("string")}),
                                  "qtype": datasets.Value("string")})
    tables = {}
    for split, samples in splits.items():
        columns = {"image": [_png(s["image"]) for s in samples], "question": [s["question"] for s in samples],
                   "answers": [[{"answer": a} for a in s["answers"]] for s in samples],
                   "qtype": [s["qtype"] for s in samples]}
        tables[split] = datasets.Dataset.from_dict(columns, features=features)
    if format == "disk":
        datasets.DatasetDict(tables).save_to_disk(str(path))
    else:
        for split, table in tables.items():
            table.to_parquet(str(path / f"{split}.parquet"))


def _png(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _write_jsonl(file: Path, rows: list[dict[str, Any]]) -> None:
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_csv(file: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with file.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "question", "answers", "qtype"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "answers": Counter(row["answers"]).most_common(1)[0][0]})
