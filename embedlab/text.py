"""Text datasets given as files, for text encoders (a sentence-transformers folder in a model spec).

A folder holds one file per split, ``test`` (required), ``train`` (the kNN bank and the probe's training set) and
optional ``val``, each as ``.jsonl``
(one JSON object per line), ``.csv`` or ``.tsv`` (with a header row), with a text field and a label field::

    reviews/train.jsonl   {"text": "a gripping film", "label": "pos"}
    reviews/test.jsonl    {"text": "two hours lost", "label": "neg"}

Labels are class names (strings) or integers. The classes are the training split's labels (the test and val labels
when there is no training file), in numeric order when every label is a whole number and in sorted string order
otherwise; class ``i`` is the ``i``-th of them, in every split. A val or test label the training split does not have
is an error naming it; a training class missing from val or test is fine (``describe()["missing_classes"]``, and one
warning line). The integer ``1`` and the string ``"1"`` are never merged into one class: a dataset using both for
one name is an error naming both (write every label of a class the same way).
Nothing is carved from the training file: a text encoder has no classifier, so nothing needs a validation split.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from embedlab.config import MAX_CLASSES, parse_options
from embedlab.data import SPLITS, DataSource, DatasetInfo
from embedlab.errors import EmbedlabError, EmbedlabWarning
from embedlab.io import require_regular_file

SUFFIXES = (".jsonl", ".csv", ".tsv")


@dataclasses.dataclass
class TextOptions:
    """``dataset_options`` of a text dataset: the names of the text and label fields."""

    text_field: str = "text"
    label_field: str = "label"


class Texts(Dataset):
    """``(text, label)`` pairs; a batch of them collates to ``(list of str, LongTensor)``."""

    def __init__(self, texts: list[str], labels: np.ndarray) -> None:
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.labels[i])

    def __getitems__(self, idx: list[int]) -> tuple[list[str], torch.Tensor]:
        return [self.texts[i] for i in idx], torch.as_tensor(self.labels[idx], dtype=torch.long)


class TextData(DataSource):
    """The split files of a text folder (see the module doc), read once; ``splits`` are those present."""

    def __init__(self, root: str | Path, **options: Any) -> None:
        opts = parse_options(TextOptions, options, "text dataset", strict=True)
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise EmbedlabError(f"text dataset {folder}: not a folder (expected train.jsonl, test.jsonl, optional "
                                f"val.jsonl; or .csv/.tsv)")
        files: dict[str, Path] = {}
        for split in SPLITS:
            found = [folder / f"{split}{s}" for s in SUFFIXES if (folder / f"{split}{s}").is_file()]
            if len(found) > 1:
                raise EmbedlabError(f"text dataset {folder}: both {found[0].name} and {found[1].name}; keep one")
            if found:
                files[split] = found[0]
        if "test" not in files:
            raise EmbedlabError(f"text dataset {folder}: no test file (test.jsonl, test.csv or test.tsv)")
        read = {split: _read_rows(path, opts) for split, path in files.items()}
        rows = {split: r for split, (r, _) in read.items()}
        self.sha256 = {split: sha for split, (_, sha) in read.items()}  # of the bytes read, for the cache key
        _check_label_kinds(rows, files)
        source = ["train"] if "train" in rows else list(rows)  # the classes are the training split's
        classes = _class_names([label for s in source for _, label in rows[s]], folder)
        index = {name: i for i, name in enumerate(classes)}
        self.missing: dict[str, list[str]] = {}  # split → training classes it has no example of
        for split, r in rows.items():
            labels = {str(lab) for _, lab in r}
            unknown = sorted(labels - set(classes))
            if unknown:
                raise EmbedlabError(f"{files[split]}: label{'s' if len(unknown) > 1 else ''} "
                                    f"{', '.join(map(repr, unknown[:10]))}{', …' if len(unknown) > 10 else ''} "
                                    f"not in the training split {files['train'].name} (its classes: "
                                    f"{', '.join(classes[:10])}{', …' if len(classes) > 10 else ''}); every val and "
                                    f"test label must be a training class")
            missing = [c for c in classes if c not in labels]
            if missing:
                self.missing[split] = missing
                warnings.warn(EmbedlabWarning(
                    f"{files[split]} has no examples of {len(missing)} of the {len(classes)} training classes "
                    f"({', '.join(missing[:10])}{', …' if len(missing) > 10 else ''})"), stacklevel=2)
        self._splits = {split: Texts([t for t, _ in r], np.array([index[str(lab)] for _, lab in r], dtype=np.int64))
                        for split, r in rows.items()}
        self.splits = tuple(s for s in SPLITS if s in files)
        self.files = files
        self.options = dataclasses.asdict(opts)
        self.info = DatasetInfo(f"text:{folder.resolve().name}", classes, (), None, None, default_model="",
                                is_image=False)

    def split(self, name: str, augment: bool = False) -> Dataset:
        self._check_split(name)
        if name not in self._splits:
            raise EmbedlabError(f"text dataset: no {name} file in {self.files['test'].parent}")
        return self._splits[name]

    def describe(self) -> dict[str, Any]:
        """The name, options and each split file's SHA-256 (the extraction cache's key: edited files re-encode)."""
        return {"name": self.info.name, "options": self.options,
                "files": {s: {"name": p.name, "sha256": self.sha256[s]} for s, p in self.files.items()},
                **({"missing_classes": self.missing} if self.missing else {})}


def _read_rows(path: Path, opts: TextOptions) -> tuple[list[tuple[str, Any]], str]:
    """``(text, label)`` of every row of one split file, and the SHA-256 of the bytes they were read from (the file
    is read once); one line naming the file and row for a bad row."""
    try:
        size = require_regular_file(path, "text dataset file").stat().st_size
        if size > MAX_TEXT_BYTES:
            raise EmbedlabError(f"{path}: {size / 2**30:.1f} GiB; embedlab reads text dataset files of at most "
                                f"{MAX_TEXT_BYTES >> 30} GiB (split it, or sample it)")
        data = path.read_bytes()
        # -sig: a BOM (Excel's CSV) is not a field name; newline="": the lines a file opened that way gives
        with io.StringIO(data.decode("utf-8-sig"), newline="") as fh:
            if path.suffix == ".jsonl":
                records = []
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            records.append((n, json.loads(line)))
                        except json.JSONDecodeError as e:
                            raise EmbedlabError(f"{path}: line {n} is not JSON ({e.msg})") from None
                        except ValueError as e:  # an integer of more than 4,300 digits
                            raise EmbedlabError(f"{path}: line {n}: {str(e).splitlines()[0][:200]}") from None
            else:
                reader = csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
                records = [(n, r) for n, r in enumerate(reader, 2)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EmbedlabError(f"cannot read text dataset file {path}: {e}") from None
    except RecursionError:
        raise EmbedlabError(f"cannot read text dataset file {path}: JSON nested too deeply") from None
    if not records:
        raise EmbedlabError(f"{path}: no rows")
    rows = []
    for n, rec in records:
        if not isinstance(rec, dict) or opts.text_field not in rec or opts.label_field not in rec:
            raise EmbedlabError(f"{path}: row {n} has no {opts.text_field!r} and {opts.label_field!r} fields (set "
                                f"dataset_options text_field / label_field to the names your file uses)")
        text, label = rec[opts.text_field], rec[opts.label_field]
        if not isinstance(text, str):
            raise EmbedlabError(f"{path}: row {n}: {opts.text_field!r} must be a string, got {type(text).__name__}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label):
            raise EmbedlabError(f"{path}: row {n}: {opts.label_field!r} must be a class name or an integer, got "
                                f"{label!r:.100}")
        for what, value in ((opts.text_field, text), (opts.label_field, label)):
            if isinstance(value, str) and not _is_unicode(value):
                raise EmbedlabError(f"{path}: row {n}: {what!r} holds a lone surrogate (an escape such as \\ud800 "
                                    f"that is not a character); fix the file's text")
        if isinstance(label, int) and abs(label) >= 10**MAX_LABEL_CHARS:
            raise EmbedlabError(f"{path}: row {n}: {opts.label_field!r} is an integer of more than "
                                f"{MAX_LABEL_CHARS:,} digits; labels are class names or class indices")
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            raise EmbedlabError(f"{path}: row {n}: {opts.label_field!r} is {len(label):,} characters long; a class "
                                f"name or integer label has at most {MAX_LABEL_CHARS:,}")
        rows.append((text, label))
    return rows, hashlib.sha256(data).hexdigest()


MAX_TEXT_BYTES = 2 << 30  # one split file: read whole into memory
MAX_LABEL_CHARS = 1000


def _is_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_label_kinds(rows: dict[str, list[tuple[str, Any]]], files: dict[str, Path]) -> None:
    """One line when the integer ``1`` and the string ``"1"`` both occur in ``.jsonl`` files (in any splits): as
    class names they would be one class, and which the file meant is not known. (A ``.csv``/``.tsv`` field has no
    type: ``1`` there is the name ``"1"`` and matches either.)"""
    first: dict[str, tuple[Any, str]] = {}  # str(label) → (label, split) where it was first seen
    for split, r in rows.items():
        if files[split].suffix != ".jsonl":
            continue
        for _, label in r:
            seen = first.setdefault(str(label), (label, split))
            if type(seen[0]) is not type(label):
                a, b = (seen, (label, split)) if isinstance(seen[0], int) else ((label, split), seen)
                raise EmbedlabError(f"text dataset {files[split].parent}: label {a[0]!r} (an integer, in "
                                    f"{files[a[1]].name}) and {b[0]!r} (a string, in {files[b[1]].name}) would be "
                                    f"one class; write every label of a class the same way (all integers or all "
                                    f"strings)")


def _class_names(labels: list[Any], folder: Path) -> tuple[str, ...]:
    """The distinct labels as class names: numeric order when all are whole numbers, else sorted strings."""
    names = {str(label) for label in labels}
    if len(names) > MAX_CLASSES:
        raise EmbedlabError(f"text dataset {folder}: {len(names)} classes; embedlab reads at most {MAX_CLASSES}")
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))
