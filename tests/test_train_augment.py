"""Batched augmentations: each operation against torchvision's on one image at a time, and the
random draws' distributions (probabilities, ranges, per-image order of the jitter)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

from labkit.train import augment
from labkit.train.augment import CropFlip, Photometric

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 20, 24, generator=g)
    x[0] = 0.3  # grey: hue undefined, saturation 0
    x[1, :, :5] = 0.0  # black rows
    x[2, 0] = 1.0  # saturated red channel
    x[3] = torch.round(x[3] * 255) / 255  # exact uint8 levels, as decoded frames are
    return x


@pytest.mark.parametrize(
    "mine, theirs, low, high",
    [
        (augment.adjust_brightness, tvf.adjust_brightness, 0.0, 2.0),
        (augment.adjust_contrast, tvf.adjust_contrast, 0.0, 2.0),
        (augment.adjust_saturation, tvf.adjust_saturation, 0.0, 2.0),
        (augment.adjust_hue, tvf.adjust_hue, -0.5, 0.5),
    ],
)
def test_jitter_operations_equal_torchvision_per_image(images, mine, theirs, low, high):
    factors = torch.linspace(low, high, len(images))
    ours = mine(images, factors)
    reference = torch.stack([theirs(img, float(f)) for img, f in zip(images, factors)])
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)
    assert not torch.allclose(ours, images, atol=1e-3)  # the grid does change the images


def test_grayscale_blur_and_solarize_equal_torchvision(images):
    torch.testing.assert_close(
        augment.grayscale(images),
        torch.stack([tvf.rgb_to_grayscale(img, 1) for img in images]),
        atol=1e-6,
        rtol=0,
    )
    for kernel in (5, 7):
        sigmas = torch.linspace(0.05, 2.0, len(images))
        reference = torch.stack(
            [
                tvf.gaussian_blur(img, [kernel, kernel], [float(s), float(s)])
                for img, s in zip(images, sigmas)
            ]
        )
        torch.testing.assert_close(
            augment.gaussian_blur(images, sigmas, kernel), reference, atol=2e-6, rtol=0
        )
    levels = (images * 255).round().to(torch.uint8)  # torchvision's threshold 128 on uint8
    reference = torch.stack([tvf.solarize(img, 128) for img in levels]).float() / 255
    torch.testing.assert_close(augment.solarize(levels.float() / 255), reference, atol=1e-6, rtol=0)


def test_blur_sigma_is_dinos_scaled_to_the_image():
    assert augment.blur_sigma(224) == pytest.approx((0.1, 2.0, 13))
    low, high, kernel = augment.blur_sigma(96)
    assert (low, high) == pytest.approx((0.1 * 96 / 224, 2.0 * 96 / 224)) and kernel == 7


def test_jitter_order_probability_and_ranges_per_image(monkeypatch):
    """Fake operations write their number as a base-4 digit and record their factors: every
    jittered image gets the four in one of the 24 orders, uniformly, with p = 0.8."""
    seen: dict[int, list[torch.Tensor]] = {op: [] for op in range(4)}

    def fake(op):
        def fn(y, factors):
            seen[op].append(factors.clone())
            return y * 4 + op

        return fn

    monkeypatch.setattr(augment, "_JITTER", tuple(fake(op) for op in range(4)))
    n = 4800
    torch.manual_seed(0)
    out = Photometric(8, blur=0.0, grayscale=0.0)(torch.zeros(n, 3, 1, 1))[:, 0, 0, 0]
    jittered = out > 0
    assert abs(float(jittered.float().mean()) - 0.8) < 0.02
    orders = {
        tuple(sum(d * 4**k for k, d in enumerate(reversed(p))) for p in [perm])[0]: perm
        for perm in itertools.permutations(range(4))
    }
    codes = out[jittered].round().long().tolist()
    assert set(codes) == set(orders)  # all 24 orders, and only permutations
    counts = torch.bincount(torch.tensor(codes), minlength=256)[list(orders)].float()
    expected = jittered.sum() / 24
    assert float(((counts - expected) ** 2 / expected).sum()) < 50  # chi2, 23 dof: p < 1e-3
    for op, (lo, hi) in enumerate(((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))):
        f = torch.cat(seen[op])
        assert len(f) == int(jittered.sum())
        assert lo <= float(f.min()) < lo + 0.01 and hi - 0.01 < float(f.max()) <= hi
        assert float(f.mean()) == pytest.approx((lo + hi) / 2, abs=0.01)


def test_grayscale_blur_solarize_probabilities(monkeypatch):
    torch.manual_seed(1)
    n = 4000
    x = torch.rand(n, 3, 4, 4)
    gray = Photometric(8, blur=0.0, jitter=0.0)(x)
    is_gray = (gray[:, 0] == gray[:, 1]).all(dim=(1, 2)) & (gray[:, 1] == gray[:, 2]).all(
        dim=(1, 2)
    )
    assert abs(float(is_gray.float().mean()) - 0.2) < 0.02
    torch.testing.assert_close(gray[is_gray], augment.grayscale(x[is_gray]).expand(-1, 3, -1, -1))
    assert torch.equal(gray[~is_gray], x[~is_gray])
    sigmas, real_blur = [], augment.gaussian_blur

    def blur(y, sigma, kernel):
        sigmas.append(sigma.clone())
        assert kernel == 7
        return real_blur(y, sigma, kernel)

    monkeypatch.setattr(augment, "gaussian_blur", blur)
    blurred = Photometric(96, blur=0.5, jitter=0.0, grayscale=0.0)(x)
    sigma = torch.cat(sigmas)
    assert abs(len(sigma) / n - 0.5) < 0.03
    low, high, _ = augment.blur_sigma(96)
    assert low <= float(sigma.min()) < low + 0.02 and high - 0.02 < float(sigma.max()) <= high
    assert float(sigma.mean()) == pytest.approx((low + high) / 2, abs=0.02)
    changed = (blurred != x).flatten(1).any(dim=1)
    assert int(changed.sum()) <= len(sigma)
    solar = Photometric(8, blur=0.0, solarize=0.2, jitter=0.0, grayscale=0.0)(x)
    flipped = (solar != x).flatten(1).any(dim=1)
    assert abs(float(flipped.float().mean()) - 0.2) < 0.02
    torch.testing.assert_close(solar[flipped], augment.solarize(x[flipped]))


def test_photometric_is_seeded_and_leaves_its_input_alone():
    x = torch.rand(6, 3, 16, 16)
    before = x.clone()
    colour = Photometric(16, blur=0.5, solarize=0.2)
    torch.manual_seed(3)
    a = colour(x)
    torch.manual_seed(3)
    b = colour(x)
    assert torch.equal(a, b) and torch.equal(x, before)
    assert a.shape == x.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_crop_flip_equals_torchvisions_crop_and_is_shared_by_leading_dims():
    clip = torch.rand(3, 3, 40, 56)
    crop = CropFlip(24, (0.3, 1.0))
    flips = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out = crop(clip)
        torch.manual_seed(seed)  # the same box, drawn by torchvision's own sampler
        top, left, h, w = RandomResizedCrop.get_params(clip, [0.3, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        reference = tvf.resized_crop(
            clip, top, left, h, w, [24, 24], interpolation=InterpolationMode.BICUBIC, antialias=True
        ).clamp(0, 1)
        torch.testing.assert_close(out, reference.flip(-1) if flip else reference)
        flips += flip
        # every frame cut alike: the crop of a clip is the crop of its frames
        torch.manual_seed(seed)
        alone = crop(clip[1])
        torch.testing.assert_close(alone, out[1])
    assert 10 <= flips <= 30
