"""Folders of frames and of masks: the DAVIS ``JPEGImages`` / ``Annotations`` layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from labkit.video.base import IMAGE_SUFFIXES, Size, Video, VideoError, _natural_key, resolve_size


def _image_files(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not folder.exists():
        raise VideoError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise VideoError(f"{folder}: not a folder of {what}")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
        ),
        key=_natural_key,
    )
    if not files:
        hint = ""
        if (folder / "JPEGImages").is_dir():
            hint = "; this looks like a DAVIS root, use davis_sequence(root, seq)"
        raise VideoError(f"{folder}: no {what} ({'/'.join(suffixes)}) in this folder{hint}")
    return files


def _open_image(file: Path):
    from PIL import Image

    try:
        image = Image.open(file)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(f"{file}: cannot read this image ({e})") from e
    return image


class FrameFolder(Video):
    """A folder of jpg/png frames sorted by name, read with PIL."""

    backend = "frames"

    def __init__(self, folder: str | Path, *, size: Size = None, fps: float = 24.0) -> None:
        folder = Path(folder)
        self.files = _image_files(folder, IMAGE_SUFFIXES, "images")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
            raise VideoError(f"{folder}: fps={fps!r} must be a positive number")
        from PIL import Image

        try:
            with Image.open(self.files[0]) as first:  # reads the header only
                w, h = first.size
        except (OSError, SyntaxError, ValueError) as e:
            raise VideoError(f"{self.files[0]}: cannot read this image ({e})") from e
        super().__init__(folder, fps=fps, source_size=(h, w), size=size, length=len(self.files))

    def _read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(indices), *self.size, 3), dtype=np.uint8)
        h, w = self.size
        for j, i in enumerate(indices.tolist()):
            image = _open_image(self.files[i]).convert("RGB")
            if image.size != (self.source_size[1], self.source_size[0]):
                raise VideoError(
                    f"{self.files[i]}: frame is {image.size[1]}x{image.size[0]} (HxW) but "
                    f"{self.files[0].name} is {self.source_size[0]}x{self.source_size[1]}"
                )
            if self.size != self.source_size:
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            out[j] = np.asarray(image)
        return out


def _mask_labels(image, file: Path) -> np.ndarray:
    """Integer labels (H, W) uint8 of one annotation image."""
    if image.mode == "P":  # DAVIS 2017: palette index = object id, 0 background
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (rgb == rgb[..., :1]).all():  # some pixel is not grey
            raise VideoError(
                f"{file}: a colour RGB mask; save multi-object masks as palette ('P') PNGs "
                "whose indices are the object ids"
            )
        values = rgb[..., 0]
    elif image.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
    else:
        raise VideoError(f"{file}: unsupported mask image mode '{image.mode}'")
    top = int(values.max())
    if top <= 1 or (top == 255 and np.isin(values, (0, 255)).all()):  # binary 0/1 or 0/255
        return (values > 0).astype(np.uint8)
    if top < 128:  # a grey-level label map: 0, 1, 2, ... as stored
        return values.astype(np.uint8)
    return (values >= 128).astype(np.uint8)  # a soft 0..255 mask, thresholded at half


def load_masks(folder: str | Path, *, size: Size = None) -> np.ndarray:
    """Reads a folder of annotation PNGs (sorted by name) as integer label maps.

    Palette ('P') PNGs (DAVIS 2017) give their palette indices, 0 = background, 1..K objects.
    Binary grayscale or grey RGB masks (DAVIS 2016, 0/255) give 0/1; other grey masks whose values
    are all below 128 are kept as labels; soft grey masks are thresholded at 128.

    Args:
        folder: folder of .png masks, e.g. ``Annotations/480p/<seq>/``.
        size: None keeps the mask size; int = shorter side (aspect kept, even); (H, W) exact.
            Resizing uses nearest neighbour, so labels stay labels.

    Returns:
        uint8 array (N, H, W) of labels.
    """
    from PIL import Image

    folder = Path(folder)
    files = _image_files(folder, (".png",), "mask PNGs")
    masks: np.ndarray | None = None
    for k, file in enumerate(files):
        labels = _mask_labels(_open_image(file), file)  # (H0, W0)
        if masks is None:
            source = labels.shape
            h, w = resolve_size(size, source)
            masks = np.empty((len(files), h, w), dtype=np.uint8)
        elif labels.shape != source:
            raise VideoError(
                f"{file}: mask is {labels.shape[0]}x{labels.shape[1]} (HxW) but "
                f"{files[0].name} is {source[0]}x{source[1]}"
            )
        if (h, w) != source:
            labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
        masks[k] = labels
    if masks is None:  # _image_files raises on a folder without masks
        raise VideoError(f"{folder}: no mask PNGs")
    return masks


def open_frames(folder: str | Path, *, size: Size = None, fps: float = 24.0) -> Video:
    """Opens a folder of jpg/png frames, sorted by name, e.g. DAVIS ``JPEGImages/480p/<seq>/``.

    Args:
        folder: the folder of one sequence's frames.
        size: None, int (shorter side) or (H, W), as in ``open_video``; resized with bilinear.
        fps: frame rate to report (DAVIS is 24).

    Returns:
        a ``Video`` with backend "frames".
    """
    return FrameFolder(folder, size=size, fps=fps)


def davis_sequence(
    root: str | Path, seq: str, resolution: str = "480p", *, size: Size = None
) -> tuple[Video, np.ndarray]:
    """Opens one DAVIS sequence: its frames and its annotation masks, checked to agree.

    Args:
        root: DAVIS root holding ``JPEGImages/<resolution>/<seq>/`` and
            ``Annotations/<resolution>/<seq>/`` (DAVIS 2016 or 2017 layout).
        seq: sequence name, e.g. "cows".
        resolution: "480p" or "Full-Resolution".
        size: None, int or (H, W); frames are resized bilinearly and masks by nearest neighbour
            to the same (H, W).

    Returns:
        (video, masks): masks uint8 (N, H, W) labels (0/1 for DAVIS 2016, object ids for 2017),
        one per frame, same (H, W) as ``video.size``.
    """
    root = Path(root)
    frames_dir = root / "JPEGImages" / resolution / seq
    masks_dir = root / "Annotations" / resolution / seq
    if not frames_dir.is_dir():
        parent = root / "JPEGImages" / resolution
        known = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        listing = f"; sequences there: {', '.join(known)}" if known else f"; {parent} not found"
        raise VideoError(f"{frames_dir}: no such DAVIS sequence folder{listing}")
    video = open_frames(frames_dir, size=size)
    masks = load_masks(masks_dir, size=size)
    if len(masks) != len(video):
        raise VideoError(
            f"{root}: sequence '{seq}' has {len(video)} frames but {len(masks)} masks "
            f"({masks_dir}); a test-dev split annotates only the first frame, load its masks "
            "with load_masks"
        )
    if masks.shape[1:] != video.size:
        raise VideoError(
            f"{root}: sequence '{seq}' frames are {video.size} (H, W) but masks are "
            f"{masks.shape[1:]}"
        )
    return video, masks
