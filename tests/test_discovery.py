"""labkit.discovery against the official LOST / TokenCut outputs (fixture), straightforward
implementations written here (loops, numpy, scipy's generalised eigh, a flood fill), and a
synthetic frame whose object is known."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from labkit.discovery import (
    ObjectDiscovery,
    attention_discovery,
    dora_discovery,
    largest_components,
    lost,
    mask_boxes,
    seed_components,
    tokencut,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "discovery_official.pt"


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def _xyxy_to_grid(box: list[int]) -> list[int]:
    """Official [xmin, ymin, xmax, ymax] at scale 1 -> (row0, col0, row1, col1)."""
    return [box[1], box[0], box[3], box[2]]


# --------------------------------------------------------------------------------------------
# Straightforward implementations
# --------------------------------------------------------------------------------------------


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components by breadth-first flood fill, in raster order of their first patch."""
    gh, gw = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for i in range(gh):
        for j in range(gw):
            if not mask[i, j] or seen[i, j]:
                continue
            comp, todo = [], deque([(i, j)])
            seen[i, j] = True
            while todo:
                r, c = todo.popleft()
                comp.append((r, c))
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= rr < gh and 0 <= cc < gw and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        todo.append((rr, cc))
            out.append(comp)
    return out


def _component_at(mask: np.ndarray, seed: int) -> np.ndarray:
    r, c = divmod(seed, mask.shape[1])
    out = np.zeros_like(mask, dtype=bool)
    for comp in _components(mask):
        if (r, c) in comp:
            for rr, cc in comp:
                out[rr, cc] = True
    return out


def _box(mask: np.ndarray) -> list[int]:
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    cols = [j for j in range(mask.shape[1]) if mask[:, j].any()]
    return [min(rows), min(cols), max(rows) + 1, max(cols) + 1] if rows else [0, 0, 0, 0]


def _lost_by_hand(keys: np.ndarray, grid: tuple[int, int], k: int) -> tuple[int, np.ndarray]:
    """LOST as the paper states it (inputs chosen so the lowest degree and the k-th are unique)."""
    n = keys.shape[0]
    A = keys.astype(np.float64) @ keys.astype(np.float64).T
    degree = [sum(1 for m in range(n) if m != i and A[i, m] > 0) for i in range(n)]
    order = sorted(range(n), key=lambda i: degree[i])
    seed = order[0]
    M = np.zeros(n)
    for p in order[:k]:
        if A[seed, p] > 0:
            M += A[p]
    return seed, _component_at((M > 0).reshape(grid), seed)


def _tokencut_by_hand(keys: np.ndarray, grid: tuple[int, int], tau: float = 0.2, eps: float = 1e-5):
    f = keys.astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    W = np.where(f @ f.T > tau, 1.0, eps)
    D = np.diag(W.sum(axis=1))
    _, vec = scipy.linalg.eigh(D - W, D, subset_by_index=[1, 1])
    x = vec[:, 0]
    seed = int(np.argmax(np.abs(x)))
    if not x[seed] > x.mean():
        x = -x
    return seed, _component_at((x > x.mean()).reshape(grid), seed), x.reshape(grid)


def _unique_lost_keys(grid: tuple[int, int], dim: int, k: int, start: int) -> np.ndarray:
    """Seeded random keys whose lowest degree and k-th/(k+1)-th degrees are not tied."""
    n = grid[0] * grid[1]
    for s in range(start, start + 500):
        x = np.random.default_rng(s).normal(size=(n, dim)).astype(np.float32)
        x += 0.3 * np.random.default_rng(s + 1).normal(size=(1, dim)).astype(np.float32)
        A = x.astype(np.float64) @ x.T.astype(np.float64)
        np.fill_diagonal(A, 0)
        deg = np.sort((A > 0).sum(1))
        if deg[0] < deg[1] and (k >= n or deg[k - 1] < deg[k]):
            return x
    raise AssertionError("no untied keys found")


# --------------------------------------------------------------------------------------------
# The official outputs
# --------------------------------------------------------------------------------------------

CASES = ["planted_6x8", "planted_9x7", "random_8x8", "davis_pixels_12x20", "tiny_vit_keys_7x12"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [100, 10])
def test_lost_matches_official(official, case, k):
    ref = official["cases"][case]
    out = ref[f"lost_k{k}"]
    res = lost(ref["keys"][None], ref["grid"], k=k)
    assert int(res.seeds[0]) == out["seed"]
    assert torch.equal(res.masks[0], out["mask"])
    assert res.boxes[0].tolist() == _xyxy_to_grid(out["box_xyxy"])
    scale = float(out["M"].abs().max())
    torch.testing.assert_close(res.scores[0], out["M"].float(), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("solver", ["torch", "scipy"])
@pytest.mark.parametrize("case", CASES)
def test_tokencut_matches_official(official, case, solver):
    ref = official["cases"][case]
    out = ref["tokencut"]
    assert out["eigenvalues"][2] - out["eigenvalues"][1] > 1e-3  # a well-defined 2nd eigenvector
    res = tokencut(ref["keys"][None], ref["grid"], tau=0.2, eps=1e-5, solver=solver)
    assert torch.equal(res.masks[0], out["mask"])
    assert res.boxes[0].tolist() == _xyxy_to_grid(out["box_xyxy"])
    torch.testing.assert_close(res.scores[0], out["eigenvector"], rtol=0, atol=1e-9)
    # the seed is argmax |x|: where the object's entries tie (planted, block-constant vectors)
    # rounding picks one of them, so the official seed must be one of the maxima
    x = out["eigenvector"].flatten().abs()
    seed = int(res.seeds[0])
    assert seed == out["seed"] or abs(float(x[seed] - x[out["seed"]])) < 1e-9
    if not case.startswith("planted"):
        assert seed == out["seed"]


# --------------------------------------------------------------------------------------------
# Straightforward implementations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,dim,k", [((5, 7), 8, 100), ((6, 6), 16, 5), ((4, 9), 4, 12)])
def test_lost_matches_by_hand(grid, dim, k):
    keys = _unique_lost_keys(grid, dim, k, start=10 * dim + k)
    seed, mask = _lost_by_hand(keys, grid, k)
    res = lost(torch.from_numpy(keys)[None], grid, k=k)
    assert int(res.seeds[0]) == seed
    np.testing.assert_array_equal(res.masks[0].numpy(), mask)
    assert res.boxes[0].tolist() == _box(mask)


@pytest.mark.parametrize("grid,dim,tau", [((5, 7), 8, 0.2), ((6, 6), 16, 0.1), ((4, 9), 6, 0.3)])
def test_tokencut_matches_by_hand(grid, dim, tau):
    g = np.random.default_rng(dim)
    keys = (g.normal(size=(grid[0] * grid[1], dim)) + 0.5 * g.normal(size=(1, dim))).astype(
        np.float32
    )
    seed, mask, x = _tokencut_by_hand(keys, grid, tau)
    res = tokencut(torch.from_numpy(keys)[None], grid, tau=tau)
    assert int(res.seeds[0]) == seed
    np.testing.assert_array_equal(res.masks[0].numpy(), mask)
    assert res.boxes[0].tolist() == _box(mask)
    np.testing.assert_allclose(res.scores[0].numpy(), x, atol=1e-9)


def test_attention_discovery_matches_by_hand():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(3, 4, 6, 9, generator=g) ** 4  # (B, h, gh, gw)
    res = attention_discovery(attn, keep=0.6)
    for b in range(3):
        a = attn[b].mean(0).double().numpy().ravel()
        order = np.argsort(-a)
        mass = np.cumsum(a[order]) / a.sum()
        kept = np.zeros(a.size, dtype=bool)
        kept[order[: int(np.searchsorted(mass, 0.6 - 1e-9)) + 1]] = (
            True  # DINO's keep-60%-mass rule
        )
        comps = _components(kept.reshape(6, 9))
        best = max(comps, key=len)  # max keeps the first of equal sizes (raster order)
        mask = np.zeros((6, 9), dtype=bool)
        for r, c in best:
            mask[r, c] = True
        np.testing.assert_array_equal(res.masks[b].numpy(), mask)
        assert res.boxes[b].tolist() == _box(mask)
        assert mask.ravel()[int(res.seeds[b])]
    one = attention_discovery(attn, keep=0.6, head=2)
    assert torch.equal(one.masks, attention_discovery(attn[:, 2], keep=0.6).masks)


def test_components_and_boxes_by_hand():
    m = torch.tensor(
        [[1, 1, 0, 0, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1], [1, 0, 1, 0, 0]], dtype=torch.bool
    )
    masks = torch.stack([m, torch.zeros_like(m), ~m])
    comp = seed_components(masks, torch.tensor([1, 7, 2]))
    assert comp[0].nonzero().tolist() == [[0, 0], [0, 1], [1, 1]]
    assert comp[1].nonzero().tolist() == [[1, 2]]  # seed outside the mask: the seed alone
    big = largest_components(masks)
    assert big[0].nonzero().tolist() == [[0, 4], [1, 3], [1, 4], [2, 4]]
    assert not big[1].any()
    assert mask_boxes(big).tolist() == [[0, 3, 3, 5], [0, 0, 0, 0], mask_boxes(big[2:]).tolist()[0]]
    assert mask_boxes(comp[:2]).tolist() == [[0, 0, 2, 2], [1, 2, 2, 3]]
    assert mask_boxes(masks[2:]).tolist() == [[0, 0, 4, 5]]


# --------------------------------------------------------------------------------------------
# A frame whose answer is known
# --------------------------------------------------------------------------------------------


def _bright_square(grid=(14, 20), box=(4, 6, 9, 11), dim=32, noise=0.15, seed=0):
    """Features of a frame with one bright square on a flat background.

    The frame (4x4 pixels per patch, background 0.2, square 1.0 on whole patches) sets each
    patch's brightness; the brightness above the background mixes a foreground direction into a
    background direction (the two negatively correlated), plus noise: the object is unambiguous
    in the features, and its patches are the answer.
    """
    gh, gw = grid
    frame = np.full((gh * 4, gw * 4), 0.2)
    r0, c0, r1, c1 = box
    frame[r0 * 4 : r1 * 4, c0 * 4 : c1 * 4] = 1.0
    bright = (frame.reshape(gh, 4, gw, 4).mean(axis=(1, 3)) - 0.2) / 0.8  # (gh, gw) in [0, 1]
    g = torch.Generator().manual_seed(seed)
    fg = torch.randn(dim, generator=g)
    bg = torch.randn(dim, generator=g)
    bg = bg - (bg @ fg) / (fg @ fg) * fg - 0.5 * fg  # bg . fg < 0
    b = torch.from_numpy(bright).float()[..., None]
    keys = b * fg + (1 - b) * bg + noise * torch.randn(gh, gw, dim, generator=g)
    return keys, torch.from_numpy(bright > 0.5)


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bright_square_found(seed):
    keys, truth = _bright_square(seed=seed)
    for method in (lost, tokencut):
        res = method(keys[None])
        assert _jaccard(res.masks[0], truth) > 0.9, method.__name__
        assert res.boxes[0].tolist() == _box(truth.numpy())
        assert truth.flatten()[int(res.seeds[0])]


# --------------------------------------------------------------------------------------------
# Batching, determinism, shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lost", "tokencut", "tokencut_torch"])
def test_batch_equals_frames(official, method):
    keys = torch.stack(
        [official["cases"][c]["keys"] for c in ("planted_6x8",)]
        + [torch.randn(48, 16, generator=torch.Generator().manual_seed(s)) for s in (4, 5)]
    )
    fn = {
        "lost": lost,
        "tokencut": tokencut,
        "tokencut_torch": lambda k, g: tokencut(k, g, solver="torch"),
    }[method]
    whole = fn(keys, (6, 8))
    again = fn(keys, (6, 8))
    for b in range(3):
        one = fn(keys[b : b + 1], (6, 8))
        assert torch.equal(whole.masks[b], one.masks[0])
        assert torch.equal(whole.boxes[b], one.boxes[0])
        assert int(whole.seeds[b]) == int(one.seeds[0])
        torch.testing.assert_close(whole.scores[b], one.scores[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(whole.masks, again.masks) and torch.equal(whole.scores, again.scores)


def test_shapes_and_dtypes():
    keys = torch.randn(2, 5, 7, 12, generator=torch.Generator().manual_seed(0))
    for res in (lost(keys), tokencut(keys), lost(keys.flatten(1, 2), (5, 7))):
        assert isinstance(res, ObjectDiscovery)
        assert res.masks.shape == (2, 5, 7) and res.masks.dtype == torch.bool
        assert res.boxes.shape == (2, 4) and res.boxes.dtype == torch.int64
        assert res.seeds.shape == (2,) and res.seeds.dtype == torch.int64
        assert res.scores.shape == (2, 5, 7) and res.scores.is_floating_point()
        assert res.objects is None
        for b in range(2):
            r0, c0, r1, c1 = res.boxes[b].tolist()
            assert 0 <= r0 < r1 <= 5 and 0 <= c0 < c1 <= 7
            assert res.masks[b].sum() == res.masks[b, r0:r1, c0:c1].sum()
            assert res.masks[b].flatten()[res.seeds[b]]
    assert torch.equal(lost(keys).masks, lost(keys.flatten(1, 2), (5, 7)).masks)
    with pytest.raises(ValueError, match="grid"):
        lost(keys.flatten(1, 2), (6, 7))
    with pytest.raises(ValueError, match="grid"):
        tokencut(keys.flatten(1, 2))
    with pytest.raises(ValueError, match="k must"):
        lost(keys, k=0)
    with pytest.raises(ValueError, match="floating"):
        tokencut(keys.long())
    with pytest.raises(ValueError, match="solver"):
        tokencut(keys, solver="numpy")
    a, b = tokencut(keys, solver="torch"), tokencut(keys, solver="scipy")
    assert torch.equal(a.masks, b.masks) and torch.equal(a.seeds, b.seeds)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# A tiny model on a real DAVIS frame, and DoRA
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=0,
        depth=2,
        embed_dim=48,
        num_heads=3,
        dynamic_img_size=True,
    ).eval()


def _davis_frames(davis_root: Path, count: int = 3) -> torch.Tensor:
    from PIL import Image

    folder = davis_root / "JPEGImages" / "480p" / "bmx-trees"
    imgs = []
    for t in range(count):
        img = Image.open(folder / f"{t:05d}.jpg").convert("RGB").resize((192, 112))
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
    x = torch.stack(imgs)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std  # (3, 3, 112, 192)


def test_tiny_model_on_davis(tiny_vit, davis_root):
    from labkit.attention import extract
    from labkit.tracking import discover_objects, track_objects

    images = _davis_frames(davis_root)
    out = extract(tiny_vit, images, -1, attention=True, kinds=("keys", "queries", "tokens"))
    keys = out.features["keys"]  # (3, 7, 12, 48)
    assert keys.shape == (3, 7, 12, 48)
    results = {
        "lost": lost(keys),
        "tokencut": tokencut(keys),
        "attention": attention_discovery(out.attention),
        "dora": dora_discovery(
            keys, out.attention, out.features["queries"], out.features["tokens"], k=3
        ),
    }
    for name, res in results.items():
        assert res.masks.shape == (3, 7, 12), name
        assert res.masks.flatten(1).any(dim=1).all(), name
        assert (
            (res.boxes[:, 2:] <= torch.tensor([7, 12])) & (res.boxes[:, :2] < res.boxes[:, 2:])
        ).all()
    dora = results["dora"]
    assert dora.objects.shape == (3, 3, 7, 12)
    assert torch.equal(dora.masks, dora.objects.any(dim=1))
    # followed from frame 0: the same objects as discover_objects + track_objects by hand
    found = discover_objects(
        out.attention[:1], out.features["queries"][:1], out.features["tokens"][:1], k=3
    )
    tracks = track_objects(found.prototypes, keys[None])
    assert torch.equal(dora.objects, tracks.masks[0])
    per_frame = dora_discovery(
        keys, out.attention, out.features["queries"], out.features["tokens"], k=3, reference=None
    )
    assert torch.equal(per_frame.objects[0], dora.objects[0])  # frame 0 is its own reference
    streamed = dora_discovery(keys[1:], prototypes=found.prototypes)  # frames after the first
    assert torch.equal(streamed.masks, dora.masks[1:])
