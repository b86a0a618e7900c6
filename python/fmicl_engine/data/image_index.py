"""The dataset's file list, labels and image sizes, read from the image headers and cached.

RandomResizedCrop needs every image's width and height before decoding, so a sampler outside
the decoder needs them up front. Pillow reads them from the headers without decoding; for ImageNet
(1.28 M files) that takes minutes, so the index is cached: in a cache directory, never in the
dataset (shared dataset folders are often read-only), one file per dataset root or file list
(``cache_directory``). Its entries are keyed by path, file size and modification time (ns): a
later build re-reads only the files that are new or changed, so a replaced, repaired or broken
file is judged afresh. An unreadable cache file is rebuilt, with a warning naming it.

Admission is by content, not by extension: a file is a sample only if Pillow identifies it as a
format DALI's image decoder reads (``decoder_problem``). Other files are bad files: left out with
one warning naming their count and the first few, or BadImageFileError with
``on_bad_file="error"``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fmicl_engine.atomic_files import write_atomically

# torchvision's ImageFolder extensions; other files in the tree are not samples and are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_ENV = "FMICL_CACHE_DIR"
_CACHE_VERSION = 2  # 2: entries keyed by (path, size, mtime); admission by decodable content
_CACHE_ARRAYS = ("paths", "file_sizes", "mtimes", "widths", "heights", "reasons")
# Pillow's names of the formats DALI's image decoder reads on the CPU and the GPU (checked with
# DALI 2.4: GIF, TGA, PCX, ICO, SGI, QOI, DDS... fail in it although Pillow reads them).
DECODER_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM", "JPEG2000", "WEBP")
_TIFF_BITS = (1, 8, 16)
_NAMED_BAD_FILES = 3  # a warning names this many skipped files; the list holds them all
ON_BAD_FILE = ("skip", "error")
ON_BAD_FILE_KEY = "data.imagefolder.on_bad_file"


class BadImageFileError(RuntimeError):
    """An unreadable or non-image file met with ``on_bad_file="error"``. ``str(err)`` is one
    line naming the file (``path``) and the config key that skips such files instead."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


@dataclass
class ImageIndex:
    """Samples in a fixed order: file paths, labels and sizes, plus the skipped files' paths."""

    paths: list[str]
    labels: np.ndarray   # int64
    widths: np.ndarray   # int32
    heights: np.ndarray  # int32
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def one_line(text: str) -> str:
    return " ".join(text.split())


def report_bad_files(bad: list[tuple[str, str]], on_bad_file: str) -> None:
    """For (path, reason) pairs: raises BadImageFileError naming the first (``"error"``), or
    warns once, in one line, with their count and the first few (``"skip"``)."""
    if not bad:
        return
    path, reason = bad[0]
    if on_bad_file == "error":
        raise BadImageFileError(f"unreadable or non-image file {path}: {one_line(reason)} "
                                f'(set {ON_BAD_FILE_KEY} = "skip" to skip such files)', path)
    if len(bad) == 1:
        message = f"skipping unreadable or non-image file {path}: {one_line(reason)}"
    else:
        named = "; ".join(f"{p}: {one_line(r)}" for p, r in bad[:_NAMED_BAD_FILES])
        more = len(bad) - _NAMED_BAD_FILES
        message = (f"skipping {len(bad)} unreadable or non-image files: {named}"
                   + (f"; and {more} more" if more > 0 else ""))
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _list_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, filename))
                    labels.append(label)
    return paths, labels, classes


def _read_file_list(file_list: Path, root: Path | None) -> tuple[list[str], list[int]]:
    base = root if root is not None else file_list.parent
    paths, labels = [], []
    for line_no, line in enumerate(file_list.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, label = line.rpartition(" ")
        if not sep or not label.lstrip("-").isdigit():
            raise ValueError(f"{file_list}:{line_no}: expected '<path> <integer label>', got {line!r}")
        paths.append(str(base / path.strip()))
        labels.append(int(label))
    return paths, labels


def decoder_problem(image: Image.Image) -> str:
    """Why DALI's image decoder cannot read this image (opened by Pillow, not decoded), or ""."""
    if image.format not in DECODER_FORMATS:
        return (f"{image.format or 'unknown'} content, which the image decoder cannot read "
                "(it reads JPEG, PNG, BMP, TIFF, PNM, JPEG 2000 and WebP)")
    if image.mode == "F":  # DALI decodes floating-point samples as wrong pixels (white)
        return f"floating-point {image.format} samples, which the image decoder cannot read"
    if image.format == "TIFF":
        bits = image.tag_v2.get(258)         # BitsPerSample: DALI's parser requires the tag
        sample_format = image.tag_v2.get(339, (1,))  # 1: unsigned integer
        if bits is None or any(b not in _TIFF_BITS for b in bits):
            return (f"TIFF with {bits or 'unstated'} bits per sample; the image decoder reads "
                    "1, 8 and 16")
        if any(f != 1 for f in sample_format):
            return ("TIFF with signed or floating-point samples; the image decoder reads unsigned "
                    "integers only")
    return ""


def header_size(path: str) -> tuple[int, int, str]:
    """(width, height, "") from the header of a file the decoder can read, or (0, 0, reason)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            problem = decoder_problem(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return 0, 0, f"{type(err).__name__}: {err}"
    return (0, 0, problem) if problem else (width, height, "")


def _file_stats(paths: list[str]) -> list[tuple[int, int]]:
    """(size, mtime in ns) of each file, (-1, -1) where it cannot be read."""
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    return stats


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where size indexes go: ``cache_dir`` if given, else $FMICL_CACHE_DIR, else
    $XDG_CACHE_HOME/fmicl_engine, else ~/.cache/fmicl_engine."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "fmicl_engine"


def _cache_path(sources: tuple[Path, ...], cache_dir=None) -> Path:
    """One file per dataset (its root, or its file list and root): a readable name and the digest
    of the resolved paths."""
    key = "\n".join(str(p.resolve()) for p in sources)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sources[0].resolve().name)[:40] or "root"
    return cache_directory(cache_dir) / f"size_index-{name}-{digest}.npz"


def _pack_strings(strings: list[str]) -> np.ndarray:
    # One utf-8 blob: numpy's fixed-width unicode arrays would take ~0.5 GB for ImageNet's paths.
    return np.frombuffer("\n".join(strings).encode(), dtype=np.uint8)


def _unpack_strings(blob: np.ndarray) -> list[str]:
    return blob.tobytes().decode().split("\n") if blob.size else [""]


def _load_cache(cache: Path) -> dict | None:
    """The cached entries (_CACHE_ARRAYS, paths and reasons as lists), or None: absent, of an
    older version, or unreadable (then with a warning naming the file: it is rebuilt)."""
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION:
                return None  # an older format: rebuilt
            entries = {name: z[name] for name in _CACHE_ARRAYS}
        entries["paths"] = _unpack_strings(entries["paths"])
        entries["reasons"] = _unpack_strings(entries["reasons"])
        if any(len(entries[name]) != len(entries["paths"]) for name in _CACHE_ARRAYS):
            raise ValueError("its arrays differ in length")
        return entries
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:
        warnings.warn(f"the image size index {cache} is unreadable "
                      f"({type(err).__name__}: {one_line(str(err))}); rebuilding it",
                      RuntimeWarning, stacklevel=3)
        return None


def _save_cache(cache: Path, entries: dict) -> None:
    arrays = {**entries, "paths": _pack_strings(entries["paths"]), "reasons": _pack_strings(entries["reasons"])}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a reader, or a crash, sees the old or the new index
        write_atomically(cache, lambda f: np.savez(f, version=_CACHE_VERSION, **arrays))
    except OSError as err:
        warnings.warn(f"could not cache the image size index at {cache}: {err}", RuntimeWarning)


def _indexed_entries(paths: list[str], cache: Path, num_threads: int) -> dict:
    """The entries of ``paths``: reused from the cache where path, size and mtime match, read
    from the headers otherwise; the cache is rewritten when anything changed."""
    with ThreadPoolExecutor(max(1, num_threads)) as pool:  # I/O-bound: threads overlap reads
        chunks = [paths[i:i + 4096] for i in range(0, len(paths), 4096)]
        stats = np.array([s for chunk in pool.map(_file_stats, chunks) for s in chunk],
                         dtype=np.int64).reshape(-1, 2)
        file_sizes, mtimes = stats[:, 0], stats[:, 1]
        cached = _load_cache(cache)
        rows = np.full(len(paths), -1, dtype=np.int64)  # each path's row in the cache
        if cached is not None:
            if cached["paths"] == paths:
                rows[:] = np.arange(len(paths))
            else:
                row_of = {p: i for i, p in enumerate(cached["paths"])}
                rows[:] = [row_of.get(p, -1) for p in paths]
        known = rows >= 0
        if known.any():
            r = rows[known]
            known[known] = ((cached["file_sizes"][r] == file_sizes[known])
                            & (cached["mtimes"][r] == mtimes[known]) & (file_sizes[known] >= 0))
        widths = np.zeros(len(paths), dtype=np.int32)
        heights = np.zeros(len(paths), dtype=np.int32)
        reasons = [""] * len(paths)
        if known.any():
            widths[known] = cached["widths"][rows[known]]
            heights[known] = cached["heights"][rows[known]]
            reasons = [cached["reasons"][r] if ok else "" for r, ok in zip(rows.tolist(), known)]
        stale = np.flatnonzero(~known)
        for i, (w, h, reason) in zip(stale, pool.map(header_size, [paths[i] for i in stale])):
            widths[i], heights[i], reasons[i] = w, h, reason
    entries = {"paths": paths, "file_sizes": file_sizes, "mtimes": mtimes, "widths": widths,
               "heights": heights, "reasons": reasons}
    if len(stale) or cached is None or len(cached["paths"]) != len(paths):
        _save_cache(cache, entries)
    return entries


def build_image_index(*, root: str | None = None, file_list: str | None = None,
                      on_bad_file: str = "skip", num_threads: int = 8,
                      cache_dir: str | os.PathLike | None = None) -> ImageIndex:
    """Lists an ImageFolder tree (class = top-level folder, sorted) or reads a file list
    (lines ``<path> <label>``, paths relative to ``root`` or else to the list's folder), then
    attaches every image's size from the cached header index, building it if needed.

    ``cache_dir``: where the index is cached (see cache_directory); the dataset is only read.
    Raises ValueError naming the path for a missing or empty dataset, before any training, and
    BadImageFileError for a bad file with ``on_bad_file="error"``.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
    if root is None and file_list is None:
        raise ValueError("give the dataset as root (an ImageFolder tree) or file_list")
    root_path = Path(root).expanduser() if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise ValueError(f"data root {root_path} does not exist or is not a directory")
    classes = None
    if file_list is not None:
        list_path = Path(file_list).expanduser()
        if not list_path.is_file():
            raise ValueError(f"data file list {list_path} does not exist")
        paths, labels = _read_file_list(list_path, root_path)
        sources, where = (list_path,) + ((root_path,) if root_path else ()), f"file list {list_path}"
    else:
        paths, labels, classes = _list_image_folder(root_path)
        sources, where = (root_path,), f"data root {root_path}"
    if not paths:
        raise ValueError(f"{where} holds no images (expected class folders of "
                         f"{', '.join(IMAGE_EXTENSIONS)} files)")

    entries = _indexed_entries(paths, _cache_path(sources, cache_dir), num_threads)
    widths, heights, reasons = entries["widths"], entries["heights"], entries["reasons"]
    good = widths > 0
    skipped = [p for p, ok in zip(paths, good) if not ok]
    report_bad_files([(paths[i], reasons[i]) for i in np.flatnonzero(~good)], on_bad_file)
    if not good.any():
        raise ValueError(f"{where}: none of its {len(paths)} image files is readable")
    keep = np.flatnonzero(good)
    return ImageIndex(
        paths=[paths[i] for i in keep],
        labels=np.asarray(labels, dtype=np.int64)[keep],
        widths=widths[keep],
        heights=heights[keep],
        classes=classes,
        skipped=skipped,
    )
