"""data=hf_vqa: HFVQA reads the same toy data from every format, lazily, and says what is wrong in one line."""

from __future__ import annotations

import dataclasses
import io
import socket
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
from omegaconf import OmegaConf

from grpo_ctrl.data.hf import DEFAULT_FIELDS, HFVQA
from grpo_ctrl.data.source import DataError, VQASource
from grpo_ctrl.data.toy import toy_sample, write_toy_vqa

SIZES = {"train": 12, "validation": 6, "test": 4}
FIELDS = {"qtype": "qtype"}
FORMATS = {"disk": "disk", "parquet": "parquet", "jsonl": "json", "csv": "csv", "imagefolder": "imagefolder"}


@pytest.fixture(scope="module", autouse=True)
def _hf_cache(tmp_path_factory):
    """load_dataset's Arrow cache goes to a temp dir, not the user's HF cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        yield


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """format -> a dir holding the toy splits SIZES in that format, written once on first use."""
    written = {}

    def get(fmt: str):
        if fmt not in written:
            written[fmt] = write_toy_vqa(tmp_path_factory.mktemp(fmt), SIZES, fmt)
        return written[fmt]

    return get


def tiny(tmp_path, columns: dict, features: dict | None = None):
    """A one-split `save_to_disk` dataset (split train); the image column defaults to PNG bytes."""
    n = len(next(iter(columns.values())))
    columns = {"image": [png(PIL.Image.new("RGB", (8, 6)))] * n, "question": ["what"] * n, **columns}
    if features is not None:
        features = datasets.Features({"image": datasets.Value("binary"), "question": datasets.Value("string"),
                                      **features})
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp_path))
    return tmp_path


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rows(split) -> list[tuple]:
    return [(s.question, s.answers, s.qtype, s.meta["index"], s.image.size, np.asarray(s.image)) for s in split]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_gives_the_toy_samples(toy, fmt):
    path = toy(fmt)
    files_before = sorted(p for p in path.rglob("*"))
    source = HFVQA(path, fields=FIELDS)
    assert isinstance(source, VQASource) and source.format == FORMATS[fmt]
    reference = HFVQA(toy("disk"), fields=FIELDS)
    source.check()
    for name, key in (("train", "train"), ("val", "validation"), ("test", "test")):
        got, want = rows(source.split(name)), rows(reference.split(name))
        assert len(got) == SIZES[key]
        for i, (g, w) in enumerate(zip(got, want)):
            truth = toy_sample(0, key, i)
            assert g[0] == w[0] == truth["question"] and g[2] == w[2] == truth["qtype"] and g[3] == w[3] == i
            assert w[1] == tuple(truth["answers"])
            assert g[1] == ((Counter(w[1]).most_common(1)[0][0],) if fmt == "csv" else w[1])  # csv: the majority
            assert g[4] == w[4] == truth["image"].size and np.array_equal(g[5], w[5])
    assert sorted(p for p in path.rglob("*")) == files_before  # no cache files in the dataset dir


def test_explicit_format_and_data_files(toy):
    path = toy("parquet")
    source = HFVQA(str(path), "parquet", {"train": "train.parquet", "dev": ["validation.parquet"]},
                   {"val": "dev", "test": None}, FIELDS)
    source.check(["train", "val"])
    assert [s.question for s in source.split("val")] == [toy_sample(0, "validation", i)["question"] for i in range(6)]


@pytest.mark.parametrize("fmt", ["disk", "jsonl", "imagefolder"])
def test_nothing_is_decoded_until_a_sample_is_indexed(toy, fmt, monkeypatch):
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    source = HFVQA(toy(fmt), fields=FIELDS)
    split = source.split("train")
    assert len(split) == 12 and len(source.split("train", 5)) == 5 and not opened
    assert source.dataset("train").features["image"] != datasets.Image(decode=True)
    split[3]
    assert len(opened) == 1
    split[4:6]
    assert len(opened) == 3


def test_subset_draw_is_deterministic_and_seeded(toy):
    def drawn(seed, name="train", size=5):
        return [s.meta["index"] for s in HFVQA(toy("disk"), seed=seed).split(name, size)]

    first = drawn(0)
    assert first == drawn(0) and len(set(first)) == 5 and first == sorted(first)
    assert drawn(1) != first
    assert drawn(0, size=12) == drawn(0, size=None) == drawn(0, size=100) == list(range(12))
    with pytest.raises(DataError, match="data.train_size=0"):
        HFVQA(toy("disk")).split("train", 0)


@pytest.mark.parametrize("answers, features, answer_key, expected", [
    ([" yes "], datasets.Value("string"), "answer", ("yes",)),
    ([["a", " b", "a"]], datasets.List(datasets.Value("string")), "answer", ("a", "b", "a")),
    ([[{"answer": "2"}, {"answer": "two "}, {"answer": "2"}]], datasets.List({"answer": datasets.Value("string")}),
     "answer", ("2", "two", "2")),
    ([{"answer": ["x", "y"], "confidence": ["yes", "no"]}],
     datasets.Sequence({"answer": datasets.Value("string"), "confidence": datasets.Value("string")}), "answer",
     ("x", "y")),
    ([[{"text": "z"}]], datasets.List({"text": datasets.Value("string")}), "text", ("z",)),
])
def test_answer_shapes(tmp_path, answers, features, answer_key, expected):
    path = tiny(tmp_path, {"answers": answers}, {"answers": features})
    source = HFVQA(path, fields={"answer_key": answer_key})
    source.check(["train"])
    assert source.split("train")[0].answers == expected


def broken_image(tmp_path):
    return tiny(tmp_path, {"image": [b"not an image"], "answers": ["a"]},
                {"image": datasets.Value("binary"), "answers": datasets.Value("string")})


ERRORS = {
    "missing column": (lambda t, p: HFVQA(t("disk"), fields={"question": "q"}),
                       "data.fields.question='q' is not a column of split 'train' of"),
    "missing qtype column": (lambda t, p: HFVQA(t("disk"), fields={"qtype": "kind"}),
                             "data.fields.qtype='kind' is not a column"),
    "answers type": (lambda t, p: HFVQA(tiny(p, {"answers": [3]})),
                     "data.fields.answers: column 'answers' of split 'train' of"),
    "question type": (lambda t, p: HFVQA(tiny(p, {"question": [1.5], "answers": ["a"]})),
                      "data.fields.question: column 'question' of split 'train'"),
    "image type": (lambda t, p: HFVQA(tiny(p, {"image": [7], "answers": ["a"]})), "holds int at row 0"),
    "image file": (lambda t, p: HFVQA(t("jsonl"), image_root=p), "not a file; set data.image_root="),
    "image bytes": (lambda t, p: HFVQA(broken_image(p)), "the image of row 0 of split 'train'"),
    "answer key": (lambda t, p: HFVQA(t("disk"), fields={"answer_key": "text"}),
                   "data.fields.answer_key='text' is not a key of the dicts in column 'answers'"),
    "no answer": (lambda t, p: HFVQA(tiny(p, {"answers": [["", " "]]})), "holds no answer at row 0"),
    "empty split": (lambda t, p: HFVQA(tiny(p, {"answers": []}, {"answers": datasets.Value("string")})),
                    "is empty; set data.splits.train="),
    "unknown split": (lambda t, p: HFVQA(t("disk"), splits={"val": "dev"}),
                      "data.splits.val='dev' is not a split of"),
    "unmapped split": (lambda t, p: HFVQA(t("disk"), splits={"val": None}),
                       "data.splits has no entry for split 'val'"),
    "framework split": (lambda t, p: HFVQA(t("disk"), splits={"validation": "validation"}),
                        "data.splits.validation is not a framework split"),
    "unknown field": (lambda t, p: HFVQA(t("disk"), fields={"answer": "a"}), "data.fields.answer is unknown"),
    "data_files split": (lambda t, p: HFVQA(t("parquet"), data_files={"train": "train.parquet"}),
                         "data.splits.val='validation' is not a key of data.data_files (keys: ['train'])"),
    "data_files file": (lambda t, p: HFVQA(t("parquet"), data_files={"train": "nope.parquet"}),
                        "data.data_files.train='nope.parquet' matches no file under"),
    "no path": (lambda t, p: HFVQA(None), "data.path is not set"),
    "empty path": (lambda t, p: HFVQA(""), "data.path is not set"),
    "missing path": (lambda t, p: HFVQA(p / "nowhere"), "nowhere does not exist"),
    "file path": (lambda t, p: HFVQA(t("parquet") / "train.parquet"), "is a file, not a dir"),
    "empty dir": (lambda t, p: HFVQA(p), "holds no dataset"),
    "unknown format": (lambda t, p: HFVQA(t("disk"), format="arrow"), "data.format='arrow' is unknown"),
    "wrong format": (lambda t, p: HFVQA(t("jsonl"), format="disk"), "is not a save_to_disk dir"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_field_mapping_errors_are_one_line(toy, tmp_path, case):
    make, expected = ERRORS[case]
    with pytest.raises(DataError) as error:
        make(toy, tmp_path).check()
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_split_checks_without_check_and_without_decoding(toy, tmp_path):
    with pytest.raises(DataError, match="data.fields.question='q' is not a column"):
        HFVQA(toy("disk"), fields={"question": "q"}).split("train")
    with pytest.raises(DataError, match="split=.dev. is unknown"):
        HFVQA(toy("disk")).split("dev")
    split = HFVQA(broken_image(tmp_path)).split("train")  # a broken image shows only when decoded
    with pytest.raises(DataError, match="cannot be read"):
        split[0]


def test_images_of_any_size_and_mode_come_back_rgb(toy, tmp_path):
    images = [PIL.Image.new("L", (1000, 30)), PIL.Image.new("RGBA", (7, 300)), PIL.Image.new("P", (33, 44)),
              PIL.Image.new("RGB", (1, 1))]
    source = HFVQA(tiny(tmp_path, {"image": [png(im) for im in images], "answers": ["a"] * 4}))
    got = list(source.split("train"))
    assert [s.image.size for s in got] == [im.size for im in images]
    assert all(isinstance(s.image, PIL.Image.Image) and s.image.mode == "RGB" for s in got)
    sizes = {s.image.size for s in HFVQA(toy("disk")).split("train")}
    assert len(sizes) > 5 and any(w != h for w, h in sizes)


def test_loading_touches_no_network(tmp_path, monkeypatch):
    path = write_toy_vqa(tmp_path, {"train": 3}, "parquet", seed=7)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert len(HFVQA(path).split("train")) == 3


def test_from_config(toy):
    from grpo_ctrl.data.hf import FieldsConfig, HFVQAConfig

    assert DEFAULT_FIELDS == dataclasses.asdict(FieldsConfig())
    node = OmegaConf.structured(HFVQAConfig(path=str(toy("disk")), seed=3))
    node.fields.qtype = "qtype"
    source = HFVQA.from_config(node)
    assert source.seed == 3 and source.fields["qtype"] == "qtype" and source.split("test")[0].qtype
    plain = HFVQA.from_config(HFVQAConfig(path=str(toy("jsonl"))))
    assert plain.format == "json" and len(plain.split("train")) == 12


def test_toy_answers():
    samples = [toy_sample(0, "train", i) for i in range(200)]
    counts = [len(s["answers"]) for s in samples]
    assert min(counts) >= 3 and max(counts) <= 10
    assert any(len(a.split()) >= 2 for s in samples for a in s["answers"])
    assert any(len(set(s["answers"])) > 1 for s in samples)
    assert {s["qtype"] for s in samples} == {"shape", "colour", "count"}
