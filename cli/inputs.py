"""Images in, figures out, for every command that takes images: folders expanded (with the lister
`predict` and `topk` use), and the figure paths planned and checked before any work: one figure
(--out), or one per image (--out-dir DIR, names from the inputs, equal stems made unique)."""

from __future__ import annotations

from pathlib import Path

from .options import MAX_FIGURE_IMAGES


def expand_images(items) -> list[Path]:
    """Files as given, folders replaced by the image files in them (sorted, subfolders included).
    A folder without images is a one-line error; files are checked when they are read."""
    from cnnviz.errors import ImageError
    from cnnviz.images import IMAGE_SUFFIXES, find_images

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise ImageError(f"directory {str(p)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                                 "give image files or a directory with images")
            files += found
        else:
            files.append(p)
    return files


def unique_stems(files) -> list[str]:
    """Each file's stem; a stem met before gets -2, -3... (photos/a.jpg and more/a.png)."""
    seen: set[str] = set()
    stems = []
    for f in files:
        stem, k = Path(f).stem, 1
        name = stem
        while name in seen:
            k += 1
            name = f"{stem}-{k}"
        seen.add(name)
        stems.append(name)
    return stems


def plan_figures(files, out, out_dir, save, command: str, max_in_one: int = MAX_FIGURE_IMAGES,
                 save_per_image: bool = False) -> list[Path] | Path:
    """Check, before the model loads, every file the command will write, and return where the
    figures go: a list (one path per image) with --out-dir, else the single figure path.

    --out and --out-dir exclude each other. Without --out-dir, the figure holds every image: more
    than MAX_FIGURE_IMAGES would make it unreadable (40 images: 1838 x 22923 px), so that is
    refused, naming --out-dir; `max_in_one` is 1 for commands whose figure shows one image.
    `save_per_image`: the command's result holds one image, so --save cannot take several."""
    from cnnviz.errors import OutputError, ParameterError
    from cnnviz.files import FIGURE_SUFFIXES, check_outputs

    from . import output

    n = len(files)
    if out is not None and out_dir is not None:
        raise ParameterError(f"--out {out!r} and --out-dir {out_dir!r} exclude each other: --out is one figure, "
                             "--out-dir one figure per image; drop one")
    if save_per_image and save is not None and n > 1:
        raise ParameterError(f"--save {save!r} holds one image's result, and {n} images were given; save them one "
                             "image at a time, or drop --save")
    if out_dir is None:
        if n > max_in_one == 1:
            raise ParameterError(f"`cnnviz {command}` draws one figure per image; for {n} images use --out-dir DIR")
        if n > max_in_one:
            raise ParameterError(f"{n} images would make one figure {n} rows tall; use --out-dir DIR for one figure "
                                 f"per image (one figure takes at most {max_in_one})")
        path = out or f"{Path(files[0]).stem}_{command}.png"
        output.check(path, save)
        return Path(path)
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise OutputError(f"--out-dir {out_dir!r} is a file, not a folder; name a folder (it is created if missing)")
    paths = [d / f"{stem}_{command}.png" for stem in unique_stems(files)]
    if save is not None:
        check_outputs(None, save, FIGURE_SUFFIXES)
        from cnnviz.files import sidecar_of

        clash = {Path(save).resolve(), sidecar_of(save).resolve()} & {p.resolve() for p in paths}
        if clash:
            raise OutputError(f"--save {save!r} would overwrite a figure of --out-dir; give it another name")
    if d.is_dir():
        for p in paths:
            output.check(p)
    else:  # created when the first figure is written, so that a failed run leaves no empty folder behind
        import os

        parent = next(a for a in d.absolute().parents if a.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OutputError(f"cannot create --out-dir {out_dir!r}: {str(parent)!r} is not a writable folder; "
                              "choose another folder")
    return paths


def wrote(paths, save=None) -> str:
    """The last line of a run that wrote several figures."""
    if isinstance(paths, Path):
        from . import output

        return output.wrote(paths, save)
    folder = paths[0].parent if paths else "."
    text = f"wrote {len(paths)} figure{'s' if len(paths) != 1 else ''} in {folder}"
    if save:
        from cnnviz.files import sidecar_of

        text += f" and {save} (+ {sidecar_of(save).name})"
    return text


def make_folder(path: Path) -> None:
    """The --out-dir folder, right before its first figure is written."""
    from cnnviz.errors import OutputError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out-dir {str(path.parent)!r}: {e.strerror}; choose another folder") from None
