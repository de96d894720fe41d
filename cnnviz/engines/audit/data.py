"""The data set of an audit: files and, where the data says so, their labels.

DATA is what `cnnviz topk` reads (`topk.list_files`): a folder of images, a folder of class folders,
or a CSV with a `file` (or `path`) column relative to the CSV. Labels come from
- class folders: every image lies in a subfolder of DATA, one level down; the folder's name is the
  class (a class name of the model, case-insensitive, or its index);
- a CSV: a `label`, `class_name`, `class`, `class_index` or `target` column (the first present).
A flat folder, or a CSV without such a column, has no labels: the audit then reports predictions
but no accuracy. Every label must be one of the model's classes, and every file a CSV lists must
exist; both are checked before any image is read, and refused in one line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ImageError, TargetError
from ..experiments.datasets import list_files

LABEL_COLUMNS = ("label", "class_name", "class", "class_index", "target")


@dataclass
class Dataset:
    root: Path
    files: list[str]          # relative to root (or absolute)
    labels: np.ndarray        # int64 per file, -1 where unknown
    label_source: str         # "class folders", "CSV column 'x'" or "none"
    ignored: list[str]

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())


def _csv_labels(path: Path) -> tuple[list[str] | None, str | None]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        file_col = cols.get("file") or cols.get("path")
        label_col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
        if label_col is None:
            return None, None
        rows = [r for r in reader if (r.get(file_col) or "").strip()]
    return [(r.get(label_col) or "").strip() for r in rows], label_col


def read_dataset(source, lm=None, limit: int | None = None) -> Dataset:
    """Files (first `limit` of them, in `topk`'s order) and labels as class indices of `lm` (when
    given; without a model the labels are only read). Raises ImageError for an empty source or a
    CSV naming missing files, TargetError for labels that are not classes of the model."""
    root, files, ignored = list_files(source)
    names: list[str] | None = None
    label_source = "none"
    p = Path(source) if not isinstance(source, (list, tuple)) else None
    if p is not None and p.is_file():
        try:
            names, col = _csv_labels(p)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ImageError(f"cannot read CSV {str(p)!r}: {e}") from None
        if names is not None:
            label_source = f"CSV column {col!r}"
            if any(not n for n in names):
                row = next(i for i, n in enumerate(names) if not n) + 2
                raise TargetError(f"CSV {str(p)!r}: row {row} has no label in column {col!r}; give every file a "
                                  "label or drop the column")
        seen: dict[str, int] = {}
        for i, f in enumerate(files):
            first = seen.setdefault(os.path.normpath(str(root / f)), i)
            if first != i:
                raise ImageError(f"CSV {str(p)!r} lists {f!r} twice (rows {first + 2} and {i + 2}); list each image "
                                 "once, or the accuracy and every mean would count it twice")
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ImageError(f"CSV {str(p)!r} lists {len(missing)} file(s) that do not exist "
                             f"({', '.join(repr(m) for m in missing[:3])}{more}); paths are relative to the CSV")
    elif p is not None and p.is_dir():
        parts = [Path(f).parts for f in files]
        if files and all(len(pp) == 2 for pp in parts) and len({pp[0] for pp in parts}) >= 1:
            names = [pp[0] for pp in parts]
            label_source = "class folders"
    if limit is not None:
        files = files[:limit]
        names = names[:limit] if names is not None else None
    labels = np.full(len(files), -1, dtype=np.int64)
    if names is not None and lm is not None:
        bad: dict[str, str] = {}
        for i, n in enumerate(names):
            try:
                labels[i] = lm.class_index(n)
            except TargetError as e:
                bad.setdefault(n, str(e))
        if bad:
            first = next(iter(bad))
            more = f" (and {len(bad) - 1} other label(s))" if len(bad) > 1 else ""
            raise TargetError(f"label {first!r} from the {label_source} is not a class of {lm.name}{more}: "
                              f"{bad[first].split(';', 1)[-1].strip()}")
    return Dataset(Path(root), files, labels, label_source, ignored)
