"""DINO's augmentations on batches of images, every random choice drawn per image in one pass.

Notation::

    N  images in a batch (the frames of a clip, or a clip's local crops);  3  RGB channels
    H, W  input height and width;  S  output side

torchvision's v2 transforms draw one set of random parameters per call, so colour jitter drawn
per frame took one call per frame: a few dozen small dispatches per clip, each with its own
uint8 -> float -> uint8 round trip. Here the parameters of all N images are drawn at once and
each operation runs once on the images that drew it. Images are float32 in [0, 1] from the
first crop to the normalisation (no uint8 rounding between operations).

The distributions are those of torchvision's transforms with DINO's arguments:

* :class:`CropFlip`: ``RandomResizedCrop(S, scale, ratio=(3/4, 4/3))`` (bicubic, antialiased;
  the box drawn by torchvision's own ``RandomResizedCrop.get_params``) then a horizontal flip
  with p = 0.5; one draw per call, so a call on a clip (T, 3, H, W) crops every frame alike.
* :class:`Photometric`, per image: ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p = 0.8 (brightness
  and contrast factors U(0.6, 1.4), saturation U(0.8, 1.2), hue shift U(-0.1, 0.1), the four in
  a random order per image), grayscale with p = 0.2, Gaussian blur with a given p (sigma
  uniform in a range), solarisation with a given p (threshold 128 of 255).

The operations equal ``torchvision.transforms.v2.functional``'s on float images (``adjust_*``,
``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``; tests/test_train_augment.py compares
them). Random draws come from torch's global generator, which :class:`ClipDataset` seeds per
sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as nnf

__all__ = [
    "CropFlip",
    "Photometric",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "grayscale",
    "gaussian_blur",
    "solarize",
    "blur_sigma",
]

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale weights


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (N, 3, H, W) -> (N, 1, H, W), torchvision's weights."""
    r, g, b = x.unbind(-3)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` clamped to [0, 1], factor (N,) per image."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale (N, 3, H, W) by factor (N,), clamped to [0, 1]."""
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend (N, 3, H, W) with each image's mean luma, factor (N,) (1 keeps the image)."""
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)  # (N, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend (N, 3, H, W) with its own luma per pixel, factor (N,) (0: grey, 1: unchanged)."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (N, 3, H, W) by shift (N,) turns in [-0.5, 0.5] (HSV hexcone model).

    Value v = max and chroma c = max - min stay; the hue, in sextants h in [0, 6), moves by
    6 shift; channel n of (red 5, green 3, blue 1) is then ``v - c clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + h) mod 6`` (the hexcone's closed form).
    """
    r, g, b = x.unbind(-3)  # (N, H, W) each
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    r_max = maxc == r  # ties resolved red, then green, as torchvision does
    g_max = (maxc == g) & ~r_max
    # the hue in sextants times the chroma: 0 / 2 / 4 after the largest channel, + [-1, 1]
    hue = torch.where(r_max, g - b, torch.where(g_max, b - r + 2 * chroma, r - g + 4 * chroma))
    hue = hue.div_(chroma.clamp_min(1e-12))  # a grey pixel: 0 / c = 0 (any hue does)
    hue = hue.add_(6.0 * shift.view(-1, 1, 1).to(x.dtype)).remainder_(6.0).unsqueeze(-3)
    channel = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype).view(1, 3, 1, 1)
    k = hue + channel  # (N, 3, H, W), in [1, 11): back into [0, 6)
    k = torch.where(k >= 6.0, k - 6.0, k)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(-3) - chroma.unsqueeze(-3) * ramp).clamp_(0.0, 1.0)


def blur_sigma(size: int) -> tuple[float, float, int]:
    """DINO's blur at 224 px (sigma 0.1 to 2 px), scaled to an image side ``size``.

    Returns:
        ``(sigma_min, sigma_max, kernel)``: the sigma range and the odd kernel side
        (``2 ceil(3 sigma_max) + 1``).
    """
    sigma_max = max(2.0 * size / 224.0, 0.2)
    return 0.1 * sigma_max / 2.0, sigma_max, 2 * math.ceil(3 * sigma_max) + 1


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur of (N, 3, H, W) with sigma (N,) per image, kernel side odd ``kernel``.

    The kernel is torchvision's (a sampled Gaussian over ``kernel`` taps, normalised), applied
    separably with reflected borders.
    """
    n, c, h, w = x.shape
    half = (kernel - 1) * 0.5
    taps = torch.linspace(-half, half, kernel, dtype=x.dtype)
    pdf = torch.exp(-0.5 * (taps / sigma.view(-1, 1).to(x.dtype)) ** 2)  # (N, kernel)
    k1 = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*3, kernel)
    pad = kernel // 2
    y = nnf.pad(x.reshape(1, n * c, h, w), [pad, pad, pad, pad], mode="reflect")
    y = nnf.conv2d(y, k1.view(n * c, 1, kernel, 1), groups=n * c)  # along H: (1, N*3, H, W+2p)
    y = nnf.conv2d(y, k1.view(n * c, 1, 1, kernel), groups=n * c)  # along W: (1, N*3, H, W)
    return y.reshape(n, c, h, w)


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert the pixels of (N, 3, H, W) at or above ``threshold``."""
    return torch.where(x >= threshold, 1.0 - x, x)


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class Photometric:
    """DINO's colour augmentations with a random draw per image (module docstring).

    Args:
        size: image side, which scales the blur's sigma (:func:`blur_sigma`).
        blur: probability of the Gaussian blur.
        solarize: probability of solarisation.
        jitter: probability of the colour jitter; grayscale: of the grayscale conversion.
    """

    def __init__(
        self,
        size: int,
        blur: float,
        solarize: float = 0.0,
        *,
        jitter: float = 0.8,
        grayscale: float = 0.2,
    ) -> None:
        self.p_jitter, self.p_gray, self.p_blur, self.p_solarize = jitter, grayscale, blur, solarize
        self.sigma_min, self.sigma_max, self.kernel = blur_sigma(size)
        # ranges of brightness, contrast, saturation factors and of the hue shift
        self.ranges = ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augmented copy of float images (N, 3, H, W) in [0, 1]."""
        n = x.shape[0]
        x = x.clone()
        # every parameter of every image drawn up front, used or not
        jitter = torch.rand(n) < self.p_jitter
        order = torch.rand(n, 4).argsort(dim=1)  # (N, 4): a uniform random order per image
        lows = torch.tensor([r[0] for r in self.ranges])
        highs = torch.tensor([r[1] for r in self.ranges])
        factors = lows + (highs - lows) * torch.rand(n, 4)  # (N, 4)
        gray = torch.rand(n) < self.p_gray
        blur = torch.rand(n) < self.p_blur
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(n)
        sol = torch.rand(n) < self.p_solarize

        jittered, ranks = jitter.tolist(), order.tolist()
        for position in range(4):  # each image's k-th operation, grouped by operation
            for op, fn in enumerate(_JITTER):
                chosen = [i for i in range(n) if jittered[i] and ranks[i][position] == op]
                _apply(x, chosen, fn, factors[:, op])
        _apply(x, _chosen(gray), lambda y: grayscale(y).expand(-1, 3, -1, -1))
        _apply(x, _chosen(blur), lambda y, s: gaussian_blur(y, s, self.kernel), sigma)
        _apply(x, _chosen(sol), solarize)
        return x


def _chosen(mask: torch.Tensor) -> list[int]:
    return [i for i, m in enumerate(mask.tolist()) if m]


def _apply(
    x: torch.Tensor,
    chosen: list[int],
    fn: Callable[..., torch.Tensor],
    values: torch.Tensor | None = None,
) -> None:
    """``x[chosen] = fn(x[chosen], values[chosen])`` in place (``fn(x[chosen])`` without values);
    nothing when none is chosen."""
    if not chosen:
        return
    index = slice(None) if len(chosen) == x.shape[0] else torch.tensor(chosen)  # all: no gather
    args = () if values is None else (values[index],)
    x[index] = fn(x[index], *args)


class CropFlip:
    """A random resized crop and a horizontal flip, one draw per call (module docstring).

    Args:
        size: S, the output side.
        scale: area range of the crop, as a fraction of the input's.
        flip: flip with p = 0.5.
    """

    def __init__(self, size: int, scale: Sequence[float], *, flip: bool = True) -> None:
        self.size, self.scale, self.flip = int(size), (float(scale[0]), float(scale[1])), flip
        self.ratio = (3.0 / 4.0, 4.0 / 3.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) float in [0, 1] -> (..., 3, S, S), every leading index cropped alike."""
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms.v2 import functional as tvf

        top, left, h, w = RandomResizedCrop.get_params(x, list(self.scale), list(self.ratio))
        out = tvf.resized_crop(
            x,
            top,
            left,
            h,
            w,
            [self.size, self.size],
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        ).clamp_(0.0, 1.0)  # bicubic overshoots
        if self.flip and bool(torch.rand(1) < 0.5):
            out = out.flip(-1)
        return out
