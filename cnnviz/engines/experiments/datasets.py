"""Datasets given as a folder (class folders searched recursively), a CSV list or a list of paths,
read one image at a time so that an unreadable file is reported, not fatal. Used by the dataset
scans (`topk`, and any engine that walks a dataset)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch

from ...errors import ImageError
from ...images import IMAGE_SUFFIXES, find_images, load_image



def list_files(source) -> tuple[Path, list[str], list[str]]:
    """(root, files relative to root, ignored non-image files) for a folder (searched recursively,
    so class folders work), a CSV with a `file` or `path` column (relative to the CSV), or a list
    of paths."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ImageError("no images given")
        return Path("."), [str(p) for p in source], []
    p = Path(source)
    if not p.exists():
        raise ImageError(f"data source not found: {str(p)!r}; give a folder of images or a CSV list")
    if p.is_dir():
        files = [str(f.relative_to(p)) for f in find_images(p)]
        ignored = sorted(str(f.relative_to(p)) for f in p.rglob("*")
                         if f.is_file() and f.suffix.lower() not in IMAGE_SUFFIXES
                         and not any(part.startswith(".") for part in f.relative_to(p).parts)
                         and not f.name.endswith(".partial"))
        if not files:
            raise ImageError(f"no images found in {str(p)!r} (looked for {', '.join(IMAGE_SUFFIXES)} in it and its "
                             "subfolders)")
        return p, files, ignored
    if p.suffix.lower() == ".csv":
        try:
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
                col = cols.get("file") or cols.get("path")
                if col is None:
                    raise ImageError(f"CSV {str(p)!r} needs a 'file' or 'path' column; it has "
                                     f"{', '.join(reader.fieldnames or []) or 'no header'}")
                files = [row[col].strip() for row in reader if (row.get(col) or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ImageError(f"cannot read CSV {str(p)!r}: {e}") from None
        if not files:
            raise ImageError(f"CSV {str(p)!r} lists no files")
        return p.parent, files, []
    raise ImageError(f"{str(p)!r} is neither a folder nor a .csv list of images")


class ImageListDataset(torch.utils.data.Dataset):
    """Item i: (i, normalized 3xHxW tensor, readable flag, reason). An unreadable file gives zeros
    and its reason instead of raising, so one bad file does not end a long scan."""

    def __init__(self, root: Path, files: Sequence[str], preprocessing):
        self.root, self.files, self.pre = Path(root), list(files), preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            x = self.pre(load_image(self.root / self.files[i]))[0]
            return i, x, True, ""
        except ImageError as e:
            reason = str(e)
        except Exception as e:  # noqa: BLE001 - any decoder failure: skip and report
            reason = f"cannot read {self.files[i]!r}: {type(e).__name__}: {e}"
        h, w = self.pre.crop
        return i, torch.zeros(3, h, w), False, reason
