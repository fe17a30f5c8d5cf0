"""Evaluation data on disk: DAVIS-layout sequences and labelled image folders, checked up front.

Everything here reads file listings and image headers only (plus each sequence's first mask), so
a bad dataset fails in seconds, before any model runs. Frames and masks are read later, one
sequence at a time, by :mod:`labkit.eval.runner`.

DAVIS layout (2016 binary 0/255 masks or 2017 palette masks; the folder structure is the same)::

    <root>/JPEGImages/<folder>/<sequence>/00000.jpg ...      folder: "480p" or "Full-Resolution"
    <root>/Annotations/<folder>/<sequence>/00000.png ...
    <root>/sequences.txt                                      optional: one sequence per line

Frames and masks are paired by file name (``00005.jpg`` with ``00005.png``), never by position.
A frame without a mask is not annotated: as in the DAVIS and YouTube-VOS evaluations, which score
the annotated frames, it is run through the model but not scored, and reported
(:class:`DatasetWarning`, and ``unannotated_frames`` in ``metrics.json``). The first frame must be
annotated (label propagation starts from it), and a mask whose frame is missing is an error naming
the files.

Image folders for k-NN (DINO's ``eval_knn`` on ImageNet uses the first layout)::

    <root>/train/<class>/*.jpg  and  <root>/val/<class>/*.jpg
    <root>/<class>/*.jpg        one folder per class; every fifth image (by name) is held out

Notation::

    T  frames of a sequence     H, W  frame (and mask) size in the files     K  objects
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit.video.frames import _mask_labels, _open_image

__all__ = [
    "DatasetError",
    "DatasetWarning",
    "DavisSequence",
    "ImageFolderSplit",
    "davis_sequences",
    "image_folder_split",
    "load_image_batch",
    "read_masks",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOLD_OUT_EVERY = 5  # class-folder layout: image i (sorted by name) is a test image when i % 5 == 4


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout, or whose files disagree."""


class DatasetWarning(UserWarning):
    """Something in a dataset that is allowed but changes what is scored (unannotated frames)."""


@dataclass(frozen=True)
class DavisSequence:
    """One checked DAVIS sequence: its files and size."""

    name: str
    frames: tuple[Path, ...]  # (T,) frame files sorted by name
    masks: tuple[Path, ...]  # (M,) mask files, masks[j] of frame annotated[j] (same file stem)
    size: tuple[int, int]  # (H, W) of frames and masks in the files
    annotated: tuple[int, ...] | None = None  # (M,) frame indices with a mask; None: all

    def __post_init__(self) -> None:
        annotated = self.annotated
        if annotated is None:
            annotated = tuple(range(len(self.masks)))
            object.__setattr__(self, "annotated", annotated)
        if len(annotated) != len(self.masks):
            raise ValueError(
                f"sequence {self.name!r}: {len(self.masks)} masks for "
                f"{len(annotated)} annotated frames"
            )

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def unannotated(self) -> tuple[int, ...]:
        """Indices of the frames without a mask (run, not scored)."""
        marked = set(self.annotated or ())  # never None after __post_init__
        return tuple(i for i in range(self.num_frames) if i not in marked)


def read_masks(seq: DavisSequence, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The label maps of a sequence's first ``num_frames`` frames, paired by file name.

    Returns:
        ``(labels, annotated)``: uint8 ``(T, H, W)`` labels as :func:`labkit.video.load_masks`
        reads them (0 where a frame has no mask), and bool ``(T,)``, which frames have a mask.
    """

    T = seq.num_frames if num_frames is None else min(num_frames, seq.num_frames)
    labels = np.zeros((T, *seq.size), dtype=np.uint8)
    annotated = np.zeros(T, dtype=bool)
    for index, path in zip(seq.annotated or (), seq.masks):  # never None after __post_init__
        if index >= T:
            continue
        mask = _mask_labels(_open_image(path), path)
        if mask.shape != tuple(seq.size):
            raise DatasetError(
                f"sequence {seq.name!r}: mask {path} is {mask.shape[0]}x"
                f"{mask.shape[1]} (HxW) but the frames are {seq.size[0]}x{seq.size[1]}"
            )
        labels[index] = mask
        annotated[index] = True
    return labels, annotated


def _pair_by_name(
    name: str, frames: list[Path], masks: list[Path], frames_dir: Path, masks_dir: Path
) -> tuple[list[Path], list[int]]:
    """Masks ordered as their frames, and those frames' indices; errors name the files."""
    index: dict[str, int] = {}
    for i, frame in enumerate(frames):
        if frame.stem in index:
            raise DatasetError(
                f"sequence {name!r}: {frames[index[frame.stem]].name} and "
                f"{frame.name} in {frames_dir} are the same frame; keep one"
            )
        index[frame.stem] = i
    orphans = [m.name for m in masks if m.stem not in index]
    if orphans:
        shown = ", ".join(orphans[:5]) + (
            f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        )
        raise DatasetError(
            f"sequence {name!r}: mask(s) {shown} in {masks_dir} have no frame of the same name in "
            f"{frames_dir} (frames and masks are paired by file name)"
        )
    pairs = sorted((index[m.stem], m) for m in masks)
    if not pairs or pairs[0][0] != 0:
        raise DatasetError(
            f"sequence {name!r}: the first frame {frames[0]} has no mask "
            f"{masks_dir / (frames[0].stem + '.png')}; label propagation starts from it"
        )
    if len(pairs) == 1 and len(frames) > 1:
        raise DatasetError(
            f"sequence {name!r}: only the first of {len(frames)} frames has a mask in {masks_dir} "
            "(a test-dev split annotates only the first frame and cannot be scored)"
        )
    marked = {j for j, _ in pairs}
    missing = [f.name for i, f in enumerate(frames) if i not in marked]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        warnings.warn(
            f"sequence {name!r}: {len(missing)} of {len(frames)} frames have no mask in "
            f"{masks_dir} ({shown}); they are not scored",
            DatasetWarning,
            stacklevel=3,
        )
    return [m for _, m in pairs], [i for i, _ in pairs]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = (
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )
    return sorted(found, key=_natural_key)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read this image ({err})") from err
    return h, w


def _has_object(path: Path) -> bool:
    """Whether an annotation PNG has an object pixel: a palette index other than 0 (background)
    and 255 (void), or a non-zero grey value."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            values = np.asarray(im if mode in ("P", "L", "1") else im.convert("L"))
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read this mask ({err})") from err
    if mode == "P":
        return bool(((values != 0) & (values != 255)).any())
    return bool(values.any())


def _sequence_names(root: Path, frames_root: Path) -> list[str]:
    listing = root / "sequences.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        if names:
            return names
    return sorted(
        p.name for p in frames_root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


def davis_sequences(
    root: str | Path, sequences: Sequence[str] = (), *, folder: str = "480p"
) -> list[DavisSequence]:
    """List and check the sequences of a DAVIS-layout root before anything heavy runs.

    Checks, each failing with a :class:`DatasetError` that names the path and the problem: the
    root has ``JPEGImages/<folder>`` and ``Annotations/<folder>``; every requested sequence has a
    frame folder with images and a mask folder whose PNGs pair with the frames by file name (a
    mask without its frame is an error; a frame without a mask is reported and not scored; the
    first frame needs one); all masks have the frames' size (image headers only); the first mask
    has at least one object.

    Args:
        root: DAVIS root.
        sequences: Names to evaluate; empty: those listed in ``<root>/sequences.txt``, else every
            folder under ``JPEGImages/<folder>``.
        folder: Resolution folder, ``"480p"`` (DAVIS evaluations) or ``"Full-Resolution"``.

    Returns:
        One :class:`DavisSequence` per sequence, in the order given (or listed).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data root {root}: no such folder")
    frames_root = root / "JPEGImages" / folder
    masks_root = root / "Annotations" / folder
    missing = [str(p.relative_to(root)) for p in (frames_root, masks_root) if not p.is_dir()]
    if missing:
        raise DatasetError(
            f"data root {root} does not have the DAVIS layout: missing {' and '.join(missing)} "
            f"(expected JPEGImages/{folder}/<sequence>/*.jpg and "
            f"Annotations/{folder}/<sequence>/*.png)"
        )
    names = list(sequences) or _sequence_names(root, frames_root)
    if not names:
        raise DatasetError(f"data root {root}: no sequence folders under {frames_root}")
    if len(set(names)) != len(names):
        raise DatasetError(f"sequences: names repeat in {names}")
    out = []
    for name in names:
        frames = _files(frames_root / name, FRAME_SUFFIXES)
        if not frames:
            known = sorted(p.name for p in frames_root.iterdir() if p.is_dir())
            raise DatasetError(
                f"sequence {name!r}: no frames in {frames_root / name}"
                + (f"; sequences there: {', '.join(known)}" if known else "")
            )
        masks = _files(masks_root / name, (".png",))
        if not masks:
            raise DatasetError(f"sequence {name!r}: no mask PNGs in {masks_root / name}")
        masks, annotated = _pair_by_name(name, frames, masks, frames_root / name, masks_root / name)
        size = _image_size(frames[0])
        for mask in masks:
            mask_size = _image_size(mask)
            if mask_size != size:
                raise DatasetError(
                    f"sequence {name!r}: mask {mask} is {mask_size[0]}x{mask_size[1]} (HxW) but "
                    f"the frames are {size[0]}x{size[1]}"
                )
        if not _has_object(masks[0]):
            raise DatasetError(
                f"sequence {name!r}: the first mask {masks[0]} has no object (all background); "
                "label propagation starts from it"
            )
        out.append(DavisSequence(name, tuple(frames), tuple(masks), size, tuple(annotated)))
    return out


# --------------------------------------------------------------------------------------------
# Labelled image folders (k-NN)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFolderSplit:
    """Train and test images of a labelled image folder."""

    classes: tuple[str, ...]  # (C,) class names, sorted; label i is classes[i]
    train: tuple[tuple[Path, int], ...]  # (image, label) pairs
    test: tuple[tuple[Path, int], ...]


def _class_images(folder: Path) -> dict[str, list[Path]]:
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _files(sub, IMAGE_SUFFIXES)
        if files:
            out[sub.name] = files
    return out


def image_folder_split(root: str | Path) -> ImageFolderSplit:
    """Train and test images of a folder with one sub-folder per class.

    ``<root>/train/<class>/`` and ``<root>/val/<class>/`` (or ``test/``) are used as given;
    otherwise ``<root>/<class>/`` is split deterministically: image ``i`` of a class (sorted by
    name) is a test image when ``i % 5 == 4``, so each class needs at least 5 images to be tested.

    Returns:
        :class:`ImageFolderSplit`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"k-NN image folder {root}: no such folder")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train_classes, test_classes = _class_images(root / "train"), _class_images(test_dir)
        classes = tuple(sorted(train_classes))
        unknown = sorted(set(test_classes) - set(train_classes))
        if unknown:
            raise DatasetError(
                f"k-NN image folder {root}: {test_dir.name}/ has classes {unknown} "
                "that train/ does not"
            )
        index = {c: i for i, c in enumerate(classes)}
        train = tuple((p, index[c]) for c in classes for p in train_classes[c])
        test = tuple((p, index[c]) for c in sorted(test_classes) for p in test_classes[c])
    else:
        by_class = _class_images(root)
        classes = tuple(sorted(by_class))
        train_l: list[tuple[Path, int]] = []
        test_l: list[tuple[Path, int]] = []
        for label, c in enumerate(classes):
            for i, p in enumerate(by_class[c]):
                (test_l if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else train_l).append((p, label))
        train, test = tuple(train_l), tuple(test_l)
    if len(classes) < 2:
        raise DatasetError(
            f"k-NN image folder {root}: needs at least two class sub-folders with images "
            f"(found {list(classes)}); layout: <root>/<class>/*.jpg or <root>/train|val/<class>/"
        )
    if not train or not test:
        raise DatasetError(
            f"k-NN image folder {root}: {len(train)} training and {len(test)} test images; both "
            f"are needed (class folders hold out every {HOLD_OUT_EVERY}th image)"
        )
    return ImageFolderSplit(classes, train, test)


def load_image_batch(paths: Sequence[Path], size: int) -> np.ndarray:
    """Images as DINO's k-NN evaluation feeds them: bicubic resize, centre crop.

    The shorter side is resized to ``round(size * 256 / 224)`` (256 for 224, DINO's
    ``Resize(256)``), then the centre ``size x size`` is cut out.

    Returns:
        uint8 ``(n, size, size, 3)`` RGB.
    """
    from PIL import Image

    short = round(size * 256 / 224)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: cannot read this image ({err})") from err
        w, h = im.size
        scale = short / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        out[i] = np.asarray(im.crop((left, top, left + size, top + size)))
    return out
