"""Superpixels: the tokens of CAST and H-CAST.

Three methods behind one call, :func:`superpixels`:

* ``"seeds"``: OpenCV contrib SEEDS (Van den Bergh et al., ECCV 2012) on the CIE LAB
  image, with the settings of the H-CAST data loader (``num_levels=1, prior=2,
  histogram_bins=5, double_step=False``, 15 iterations; HiOT b1a222b,
  ``deit/dataset/breeds_seeds.py``). These are the superpixels the CAST/H-CAST
  checkpoints were trained with. CPU only, one image at a time.
* ``"slic"``: scikit-image SLIC (Achanta et al., TPAMI 2012) with connectivity
  enforcement. CPU only, one image at a time.
* ``"torch_slic"``: a batched SLIC written in torch that runs on the images' device,
  with batched connectivity enforcement. See :func:`torch_slic`.

:class:`SuperpixelTransform` wraps the call for data loaders, and
:func:`explained_variation` scores a segmentation.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "superpixels",
    "torch_slic",
    "enforce_connectivity",
    "max_superpixels",
    "max_token_budget",
    "explained_variation",
    "SuperpixelTransform",
]

METHODS = ("seeds", "slic", "torch_slic")

# H-CAST's SEEDS settings (HiOT b1a222b, deit/dataset/breeds_seeds.py).
SEEDS_SETTINGS = dict(num_levels=1, prior=2, histogram_bins=5, double_step=False)
SEEDS_ITERATIONS = 15

ImageLike = Union[torch.Tensor, np.ndarray]


# ----------------------------------------------------------------------------- input

def _check_images(images: ImageLike, validate_args: bool = True) -> torch.Tensor:
    """Return ``images`` as a tensor after checking rank, layout and dtype (and, with
    ``validate_args``, that float pixels are finite)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images: expected a torch.Tensor (B,3,H,W) float or (B,H,W,3) uint8, "
            f"received {type(images).__name__}.")
    if images.dim() != 4:
        raise ValueError(
            f"images: expected a 4-D batch, (B,3,H,W) normalised float or (B,H,W,3) "
            f"uint8, received shape {tuple(images.shape)}; add a batch dimension with "
            f"images[None] for a single image.")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(
                f"images: uint8 images must be channels-last (B,H,W,3) RGB, received "
                f"shape {tuple(images.shape)}.")
    elif images.is_floating_point():
        if images.shape[1] != 3:
            raise ValueError(
                f"images: float images must be channels-first (B,3,H,W), ImageNet-"
                f"normalised RGB, received shape {tuple(images.shape)}.")
        if validate_args and not torch.isfinite(images).all():
            raise ValueError("images: expected finite values, received NaN or inf.")
    else:
        raise ValueError(
            f"images: expected dtype uint8 (B,H,W,3) or a floating dtype (B,3,H,W), "
            f"received {images.dtype}.")
    if images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty batch, received shape "
                         f"{tuple(images.shape)}.")
    return images


def _check_settings(num_segments: int, method: str, mean: Sequence[float],
                    std: Sequence[float]) -> int:
    """Check the arguments shared by :func:`superpixels` and :class:`SuperpixelTransform`;
    returns ``num_segments`` as an int."""
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) \
            or num_segments < 1:
        raise ValueError(f"num_segments: expected an integer >= 1, received "
                         f"{num_segments!r}.")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, received {method!r}.")
    _check_mean_std(mean, std)
    return int(num_segments)


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise ValueError(f"{name}: expected 3 per-channel values (RGB), received "
                             f"{len(value)}: {tuple(value)}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"std: expected positive values, received {tuple(std)}.")


def _seeds_grid(height: int, width: int, num_segments: int) -> Tuple[int, int]:
    """Rows and columns of the seed grid OpenCV's SEEDS lays out for a request.

    Mirrors ``SuperpixelSEEDSImpl::initialize`` (opencv_contrib, ``ximgproc/seeds.cpp``):
    requests under 10 become 10, ``rows = (int)sqrtf(n * H / W)`` in float32 and
    ``cols = rows * W / H`` in integers. OpenCV uses at least two block levels (H-CAST's
    ``num_levels=1`` becomes 2), so every seed must span at least 2 x 2 pixels:
    ``2 * rows <= H`` and ``2 * cols <= W``. Outside that (and with ``rows`` or ``cols``
    0) OpenCV's level search runs past level 0 and the process segfaults or never
    returns; :func:`max_superpixels` keeps requests inside it.
    """
    n = np.float32(max(int(num_segments), 10))
    rows = int(np.sqrt(n * np.float32(height) / np.float32(width)))
    cols = rows * width // height
    return rows, cols


@functools.lru_cache(maxsize=256)
def _seeds_range(height: int, width: int) -> Tuple[int, int]:
    """``(low, high)``: the requests OpenCV's SEEDS can lay out on an H x W image.

    ``rows >= 1`` and ``cols >= 1`` hold from some request on, ``2 * rows <= H`` and
    ``2 * cols <= W`` up to some request (both grow with it), so the valid requests are
    the interval ``[low, high]``; ``low > high`` when none is valid.
    """
    def upper(n: int) -> bool:
        rows, cols = _seeds_grid(height, width, n)
        return 2 * rows <= height and 2 * cols <= width

    def lower(n: int) -> bool:
        rows, cols = _seeds_grid(height, width, n)
        return rows >= 1 and cols >= 1

    # largest n with upper(n) (upper(1) holds for H, W >= 2), smallest n with lower(n)
    low_n, high_n = 0, height * width
    while low_n < high_n:
        mid = (low_n + high_n + 1) // 2
        low_n, high_n = (mid, high_n) if upper(mid) else (low_n, mid - 1)
    high = low_n
    low_n, high_n = 1, max(high, 1) + 1
    while low_n < high_n:
        mid = (low_n + high_n) // 2
        low_n, high_n = (low_n, mid) if lower(mid) else (mid + 1, high_n)
    return low_n, high


def max_superpixels(height: int, width: int, method: str = "seeds", downsample: int = 2) -> int:
    """The largest ``num_segments`` that takes effect in :func:`superpixels` on an H x W
    image.

    The rule per method:

    * ``"seeds"`` (requests above it raise ``ValueError`` before OpenCV is called):
      OpenCV lays out ``floor(sqrt(n * H / W))`` rows of seeds and
      ``rows * W // H`` columns (``n`` at least 10), each seed at least 2 x 2 pixels,
      so about one superpixel per 4 pixels: ``(H // 2 + 1) ** 2 - 1`` for square images
      (288 for 32 x 32, 12,768 for 224 x 224). Beyond it OpenCV segfaults or never
      returns. Very elongated images (``W > 10 H`` or ``H > 10 W``) also need a
      minimum request for one full row and column of seeds (11 for 16 x 161); the
      ``ValueError`` says which. This returns 0 if no request fits.
    * ``"slic"``: one superpixel per pixel, ``H * W``. Larger requests are clamped to
      it: scikit-image's grid is then one seed per pixel either way (same ids).
    * ``"torch_slic"``: one per pixel of the working resolution,
      ``max(1, H // downsample) * max(1, W // downsample)``; larger requests are
      clamped to it (its grid is clamped there anyway: same ids).

    Args:
        height, width: the image size in pixels.
        method: as in :func:`superpixels`.
        downsample: ``torch_slic``'s working-resolution factor (its default is 2).

    Returns:
        int: the largest ``num_segments`` that takes effect (0 if ``"seeds"`` fits
        none).

    Raises:
        ValueError: for an unknown ``method``, a size under 1 or ``downsample`` under 1.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, received {method!r}.")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected sizes >= 1, received {height} x {width}.")
    if method == "slic":
        return height * width
    if method == "torch_slic":
        if int(downsample) < 1:
            raise ValueError(f"downsample: expected an integer >= 1, received {downsample!r}.")
        return max(1, height // int(downsample)) * max(1, width // int(downsample))
    low, high = _seeds_range(height, width)
    return high if low <= high else 0


def max_token_budget(height: int, width: int) -> int:
    """The largest superpixel token budget (``max_tokens``) hcast accepts for ``height`` x
    ``width`` inputs: one token per pixel, ``height * width``.

    Superpixel ids are pixel labels, so an image holds at most one id per pixel, and a
    fixed budget above that only pads every image with empty tokens (a budget of 10**7
    asks for gigabytes before the first image). The CLI (``--max-tokens``), the export and
    model folders' ``config.json`` are checked against it.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected a positive image size, got {height}x{width}.")
    return int(height) * int(width)


def _check_seeds_fit(num_segments: int, height: int, width: int) -> None:
    """Raise ValueError unless OpenCV's SEEDS can lay out a seed grid for
    ``num_segments`` on an image of ``height`` x ``width`` (outside that it segfaults or
    never returns; see :func:`_seeds_grid`)."""
    low, high = _seeds_range(height, width)
    if low > high:
        raise ValueError(
            f"images: method='seeds' cannot lay out a seed grid on a {height}x{width} image; "
            f"pad or crop it to a less elongated shape, or use method='torch_slic'.")
    if num_segments > high:
        raise ValueError(
            f"num_segments={num_segments} is more than method='seeds' can place on a "
            f"{height}x{width} image: at most {high} (OpenCV's SEEDS needs seeds of at "
            f"least 2x2 pixels, more segfault or hang). Pass num_segments <= {high} or "
            f"larger images (a CAST model takes num_segments from its pretrained_cfg: "
            f"pass it larger images or your own segments).")
    if num_segments < low:
        raise ValueError(
            f"num_segments={num_segments} is too few for method='seeds' on an elongated "
            f"{height}x{width} image: at least {low} (OpenCV needs one full row and column "
            f"of seeds, fewer segfault). Pass num_segments >= {low}.")


def _to_uint8_hwc(images: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float]) -> np.ndarray:
    """(B,3,H,W) normalised float or (B,H,W,3) uint8 -> (B,H,W,3) uint8 numpy RGB.

    Float images are converted exactly as the H-CAST data loader does: denormalise in
    float64, multiply by 255 and truncate (``astype(np.uint8)``), so SEEDS sees the same
    bytes it saw in training. Values are clipped to [0, 255] first, where the original
    code would wrap around.
    """
    if images.dtype == torch.uint8:
        return images.cpu().numpy()
    x = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    x = x * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)
    x = np.clip(x * 255, 0, 255)
    return x.astype(np.uint8)


def _to_float_rgb(images: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """(B,3,H,W) normalised float or (B,H,W,3) uint8 -> (B,3,H,W) float RGB in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float() / 255
    x = images.float()
    m = x.new_tensor(mean).view(1, 3, 1, 1)
    s = x.new_tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp_(0, 1)


# ----------------------------------------------------------------------------- public

def superpixels(
        images: ImageLike,
        num_segments: int = 196,
        method: str = "seeds",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        validate_args: bool = True,
        **method_kwargs,
) -> torch.Tensor:
    """Superpixel ids for a batch of images.

    Args:
        images: ``(B, 3, H, W)`` float tensor, RGB normalised with ``mean``/``std``
            (what timm's transforms produce), or ``(B, H, W, 3)`` uint8 RGB tensor (or
            numpy array).
        num_segments: requested number of superpixels per image (>= 1). For
            ``"seeds"`` at most ``max_superpixels(H, W)`` (about one per 4 pixels);
            ``"slic"`` and ``"torch_slic"`` clamp larger requests to one per pixel (see
            :func:`max_superpixels`). SEEDS and SLIC treat it as a target on a
            regular grid: the count they return varies a little (SEEDS returns at
            least 4).
        method: ``"seeds"`` (OpenCV contrib, H-CAST's settings; needs
            ``pip install "hcast[seeds]"``), ``"slic"`` (scikit-image) or
            ``"torch_slic"`` (batched torch SLIC on the images' device, see
            :func:`torch_slic`).
        mean, std: per-channel normalisation of float images (timm's ImageNet default).
        validate_args: check that float images are finite (one pass over the pixels);
            shape, dtype and ``num_segments`` checks always run.
        **method_kwargs: passed to the method: ``num_iterations`` for ``"seeds"``
            (default 15); keyword arguments of :func:`skimage.segmentation.slic` for
            ``"slic"`` (default ``compactness=10``); those of :func:`torch_slic` for
            ``"torch_slic"``.

    Returns:
        ``(B, H, W)`` int64 tensor of superpixel ids in ``[0, S)`` on the images'
        device. ``"slic"`` and ``"torch_slic"`` ids are contiguous per image (every id
        in ``[0, S_b)`` occurs) and each id is one 4-connected region. ``"seeds"`` ids
        are OpenCV's labels unchanged (``S`` = ``getNumberOfSuperpixels()``); SEEDS
        does not guarantee connectivity.

    Raises:
        ValueError: bad shape, dtype, ``method`` or ``mean``/``std``; NaN or infinite
            pixels; ``num_segments`` below 1, or for ``"seeds"`` above
            :func:`max_superpixels` for the image size (checked before OpenCV is called:
            beyond it SEEDS segfaults or hangs).
        TypeError: ``images`` is not a tensor or array.
        ImportError: ``"seeds"`` without OpenCV contrib installed.
    """
    images = _check_images(images, validate_args)
    num_segments = _check_settings(num_segments, method, mean, std)
    height, width = (images.shape[1:3] if images.dtype == torch.uint8 else images.shape[2:])
    if method == "seeds" and (height < 16 or width < 16):
        # SEEDS returns garbage labels or never returns on tiny images.
        raise ValueError(f"images: method='seeds' needs H, W >= 16, received "
                         f"H={height}, W={width}; use method='torch_slic' for tiny images.")
    if method == "seeds":
        _check_seeds_fit(num_segments, height, width)
    elif method == "slic":
        num_segments = min(num_segments, max_superpixels(height, width, method))
    device = images.device
    if method == "seeds":
        out = _seeds(_to_uint8_hwc(images, mean, std), num_segments, **method_kwargs)
    elif method == "slic":
        out = _skimage_slic(images, num_segments, mean, std, **method_kwargs)
    else:
        return torch_slic(_to_float_rgb(images, mean, std), num_segments, **method_kwargs)
    return torch.from_numpy(out).to(device=device, dtype=torch.int64)


def _import_cv2():
    install = 'pip install "hcast[seeds]" (or pip install opencv-contrib-python-headless)'
    try:
        import cv2
    except ModuleNotFoundError as err:
        if err.name != "cv2":  # OpenCV is there but a module it imports is not: that is the error
            raise ImportError(f'method="seeds": OpenCV (cv2) is installed but failed to import: {err}') from err
        raise ImportError(f'method="seeds" needs OpenCV with the contrib modules: {install}.') from err
    except ImportError as err:  # installed but broken: a missing system library (libGL ...), a bad build
        raise ImportError(f'method="seeds": OpenCV (cv2) is installed but failed to import: {err}. Fix that '
                          f'installation (e.g. the system library it names), or reinstall: {install}.') from err
    if not hasattr(getattr(cv2, "ximgproc", None), "createSuperpixelSEEDS"):
        raise ImportError(f'method="seeds" needs OpenCV with the contrib modules (cv2.ximgproc); OpenCV '
                          f'{getattr(cv2, "__version__", "?")} is installed without them: pip uninstall '
                          f'opencv-python opencv-python-headless, then {install}.')
    return cv2


def _seeds(images: np.ndarray, num_segments: int, num_iterations: int = SEEDS_ITERATIONS
           ) -> np.ndarray:
    """SEEDS on each (H,W,3) uint8 RGB image, as the H-CAST data loader calls it."""
    cv2 = _import_cv2()
    b, h, w, _ = images.shape
    out = np.empty((b, h, w), dtype=np.int64)
    for i in range(b):
        lab = cv2.cvtColor(np.ascontiguousarray(images[i]), cv2.COLOR_RGB2LAB)
        seeds = cv2.ximgproc.createSuperpixelSEEDS(
            w, h, 3, num_superpixels=num_segments, **SEEDS_SETTINGS)
        seeds.iterate(lab, num_iterations=num_iterations)
        labels = seeds.getLabels()
        if labels.min() < 0 or labels.max() >= seeds.getNumberOfSuperpixels():
            raise RuntimeError(
                f"OpenCV SEEDS returned labels outside [0, "
                f"{seeds.getNumberOfSuperpixels()}) for a {h}x{w} image with "
                f"num_segments={num_segments}; try fewer segments or a larger image.")
        out[i] = labels
    return out


def _skimage_slic(images: torch.Tensor, num_segments: int, mean, std, **kwargs
                  ) -> np.ndarray:
    from skimage.segmentation import slic

    rgb = _to_float_rgb(images, mean, std).cpu().permute(0, 2, 3, 1).numpy()
    kwargs.setdefault("compactness", 10.0)
    kwargs.update(start_label=0, enforce_connectivity=True, channel_axis=-1)
    out = np.empty(rgb.shape[:3], dtype=np.int64)
    for i in range(rgb.shape[0]):
        labels = slic(rgb[i].astype(np.float64), n_segments=num_segments, **kwargs)
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out


# ----------------------------------------------------------------------------- torch SLIC

def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [0,1] -> (B,3,H,W) CIE LAB (D65), as skimage.color.rgb2lab."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    m = rgb.new_tensor([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    white = rgb.new_tensor([0.95047, 1.0, 1.08883])
    xyz = torch.einsum("ij,bjhw->bihw", m / white[:, None], lin)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12).pow(1 / 3),
                    7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), 1)


def _grid_shape(h: int, w: int, num_segments: int) -> Tuple[int, int]:
    """Rows and columns of a grid of about ``num_segments`` square cells on h x w."""
    step = math.sqrt(h * w / num_segments)
    gy = min(h, max(1, round(h / step)))
    gx = min(w, max(1, round(w / step)))
    while gy * gx > num_segments:  # rounding up both sides can exceed the request
        if gy >= gx:
            gy -= 1
        else:
            gx -= 1
    return gy, gx


def _slic_assign(feat: torch.Tensor, valid: torch.Tensor, gy: int, gx: int,
                 num_iterations: int) -> torch.Tensor:
    """Batched SLIC iterations.

    ``feat`` (B,5,gy*cy,gx*cx) holds scaled (L,a,b,y,x) per pixel, with even cell sizes
    cy, cx; ``valid`` (gy*cy,gx*cx) bool marks pixels inside the image. Each quarter of a
    grid cell is compared with the 2x2 centres nearest to it, which covers SLIC's
    2S x 2S search window around every centre; all distances are dense broadcast ops on
    the image layout. Centres are updated with one ``index_add_`` per iteration.
    Returns (B, gy*cy, gx*cx) int64 centre index in [0, gy*gx).
    """
    b, c, hp, wp = feat.shape
    qy, qx = 2 * gy, 2 * gx  # quarter-cells
    sy, sx = hp // qy, wp // qx
    g = gy * gx
    dev = feat.device
    # layout (5, pixel of quarter, B, qy, qx): centres broadcast over the pixel dim and
    # channels are summed over the outer dim, so every op runs over contiguous rows
    fq = feat.view(b, c, qy, sy, qx, sx).permute(1, 3, 5, 0, 2, 4).reshape(c, sy * sx, b, qy, qx)
    vq = valid.view(qy, sy, qx, sx).permute(1, 3, 0, 2).reshape(sy * sx, 1, qy, qx)
    # initial centres: mean of each cell's valid pixels
    vf = vq.to(feat.dtype)
    cnt0 = vf.sum(0).view(gy, 2, gx, 2).sum((1, 3))
    sum0 = (fq * vf).sum(1).view(c, b, gy, 2, gx, 2).sum((3, 5)).transpose(0, 1)
    centres = sum0 / cnt0.clamp_min(1)  # (B,5,gy,gx)
    # candidate (a, b) of quarter (q, r) is padded centre ((q+1)//2 + a, (r+1)//2 + b),
    # that is element (q + 1 + 2a, r + 1 + 2b) of the padded grid repeated twice per axis
    far = 1e4  # centres outside the grid: never the nearest
    ids = F.pad(torch.arange(g, device=dev).view(gy, gx), (1, 1, 1, 1))
    ids = ids.repeat_interleave(2, 0).repeat_interleave(2, 1)
    shifts = [(1 + 2 * a, 1 + 2 * b_) for a in (0, 1) for b_ in (0, 1)]
    cand_ids = [ids[i:i + qy, j:j + qx] for i, j in shifts]
    flat = fq.reshape(c, -1)
    offs = (torch.arange(b, device=dev) * g).view(1, b, 1, 1)
    for it in range(num_iterations + 1):
        rep = F.pad(centres, (1, 1, 1, 1), value=far).repeat_interleave(2, 2).repeat_interleave(2, 3)
        best_d = best = None
        for (i, j), lab in zip(shifts, cand_ids):
            cen = rep[:, :, i:i + qy, j:j + qx].transpose(0, 1).unsqueeze(1)  # (5,1,B,qy,qx)
            sq = (fq - cen).square_()
            d = sq[0] + sq[1]  # (P,B,qy,qx); explicit adds beat sum(0) on CPU
            for k in range(2, c):
                d += sq[k]
            if best_d is None:
                best_d, best = d, lab.expand_as(d)
            else:
                closer = d < best_d
                best_d = torch.where(closer, d, best_d)
                best = torch.where(closer, lab, best)
        if it == num_iterations:
            break
        idx = torch.where(vq, best + offs, b * g).reshape(-1)  # padding -> spare bin
        sums = torch.stack([torch.bincount(idx, weights=f, minlength=b * g + 1) for f in flat])
        cnts = torch.bincount(idx, minlength=b * g + 1).to(feat.dtype)
        sums = sums[:, :-1].to(feat.dtype).view(c, b, gy, gx).transpose(0, 1)
        cnts = cnts[:-1].view(b, 1, gy, gx)
        centres = torch.where(cnts > 0, sums / cnts.clamp_min(1), centres)
    # back to image layout
    return best.reshape(sy, sx, b, qy, qx).permute(2, 3, 0, 4, 1).reshape(b, hp, wp)


def _run_starts(segments: torch.Tensor, dim: int) -> torch.Tensor:
    """Flat index of the first pixel of each pixel's run of equal ids along ``dim``."""
    b, h, w = segments.shape
    idx = torch.arange(h * w, device=segments.device).view(1, h, w).expand(b, h, w)
    start = torch.ones_like(segments, dtype=torch.bool)
    if dim == 2:
        start[:, :, 1:] = segments[:, :, 1:] != segments[:, :, :-1]
    else:
        start[:, 1:, :] = segments[:, 1:, :] != segments[:, :-1, :]
    return torch.where(start, idx, 0).cummax(dim).values.reshape(b, h * w)


def _connected_components(segments: torch.Tensor) -> torch.Tensor:
    """4-connected components of equal ids, batched.

    Args:
        segments: (B,H,W) int64 ids.
    Returns:
        (B,H*W) int64: for each pixel, the smallest flat pixel index of its component
        (the component's root). Each round takes the minimum label over every
        horizontal run of equal ids, then over every vertical run (segmented min by
        ``scatter_reduce``), then follows labels by pointer jumping; it converges in a
        few rounds for compact regions.
    """
    b, h, w = segments.shape
    n = h * w
    runs = [_run_starts(segments, 2), _run_starts(segments, 1)]
    comp = torch.arange(n, device=segments.device).expand(b, n).contiguous()
    while True:
        prev = comp
        for run in runs:
            run_min = torch.full_like(comp, n).scatter_reduce_(1, run, comp, "amin")
            comp = run_min.gather(1, run)
        # pointer jumping: a pixel's label is a pixel of the same component, follow it
        comp = comp.gather(1, comp)
        if torch.equal(comp, prev):
            return comp


def _merge_small_components(comp: torch.Tensor, h: int, w: int, min_size: Union[int, torch.Tensor],
                            max_passes: int = 8) -> torch.Tensor:
    """Merge components smaller than ``min_size`` pixels (an int, or a (B, 1) tensor: one
    size per image) into a neighbouring component.

    A small component joins its largest 4-neighbour when that neighbour is larger (ties
    broken by root index), so the merges form chains towards larger components and never
    cycles; chains are resolved by pointer jumping. Every merged region stays connected.
    ``comp`` (B,H*W) holds root pixel indices; the result does too.
    """
    b, n = comp.shape
    if n == 1 or (isinstance(min_size, int) and min_size <= 1):
        return comp
    offs = (torch.arange(b, device=comp.device) * n).view(b, 1)
    for _ in range(max_passes):
        size = torch.bincount((comp + offs).view(-1), minlength=b * n).view(b, n)
        key = size * n + torch.arange(n, device=comp.device)  # (size, root) order
        small = (size > 0) & (size < min_size)
        if not bool(small.any()):
            break
        pix_key = key.gather(1, comp).view(b, h, w)
        c = comp.view(b, h, w)
        best = torch.full((b, n), -1, dtype=torch.int64, device=comp.device)
        pairs = []
        if w > 1:
            pairs += [(c[:, :, :-1], pix_key[:, :, 1:]), (c[:, :, 1:], pix_key[:, :, :-1])]
        if h > 1:
            pairs += [(c[:, :-1, :], pix_key[:, 1:, :]), (c[:, 1:, :], pix_key[:, :-1, :])]
        for own, other_key in pairs:
            best.scatter_reduce_(1, own.reshape(b, -1), other_key.reshape(b, -1), "amax")
        # neighbours of the own component have the own key: they never win (not larger)
        target = torch.where(small & (best > key), best % n, torch.arange(n, device=comp.device))
        while True:
            nxt = target.gather(1, target)
            if torch.equal(nxt, target):
                break
            target = nxt
        new = target.gather(1, comp)
        if torch.equal(new, comp):
            break
        comp = new
    return comp


def _relabel_contiguous(comp: torch.Tensor) -> torch.Tensor:
    """(B,N) root indices -> (B,N) ids 0..S_b-1, numbered in raster order of the roots."""
    present = torch.zeros_like(comp, dtype=torch.bool).scatter_(1, comp, True)
    new_id = present.long().cumsum(1) - 1
    return new_id.gather(1, comp)


def _limit_segments(labels: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Merge each image's smallest regions into their largest neighbours until it has at
    most ``num_segments`` ids: connectivity enforcement can split a SLIC cluster into
    several regions, and a model's token budget relies on the count asked for.

    Args:
        labels: (B,H,W) int64 ids, contiguous per image, each id one 4-connected region.
        num_segments: the most ids an image may have (>= 1).
    Returns:
        (B,H,W) int64 ids, contiguous per image, at most ``num_segments`` per image.
    """
    b, h, w = labels.shape
    for _ in range(64):
        flat = labels.reshape(b, -1)
        count = flat.amax(1) + 1
        excess = count - num_segments
        if not bool((excess > 0).any()):
            return labels
        n = int(count.max())
        offs = (torch.arange(b, device=labels.device) * n).view(b, 1)
        sizes = torch.bincount((flat + offs).view(-1), minlength=b * n).view(b, n).float()
        sizes = torch.where(torch.arange(n, device=labels.device) < count[:, None], sizes, float("inf"))
        ordered = sizes.sort(1).values
        # merge every region at most as large as the excess-th smallest (more on ties: fewer ids)
        pick = ordered.gather(1, (excess.clamp_min(1) - 1).view(b, 1))
        min_size = torch.where(excess.view(b, 1) > 0, pick + 1, torch.zeros_like(pick)).long()
        comp = _merge_small_components(_connected_components(labels), h, w, min_size)
        labels = _relabel_contiguous(comp).view(b, h, w)
    raise RuntimeError(f"could not reduce the superpixels to num_segments={num_segments}; please report this.")


def enforce_connectivity(segments: torch.Tensor, min_size: int = 1) -> torch.Tensor:
    """Split ids into 4-connected regions, merge regions under ``min_size`` pixels.

    Args:
        segments: (B,H,W) integer ids.
        min_size: regions with fewer pixels join their largest neighbouring region.
    Returns:
        (B,H,W) int64 ids, contiguous per image, each id one 4-connected region.
    """
    b, h, w = segments.shape
    comp = _connected_components(segments.long())
    comp = _merge_small_components(comp, h, w, min_size)
    return _relabel_contiguous(comp).view(b, h, w)


def torch_slic(
        images: torch.Tensor,
        num_segments: int = 196,
        compactness: float = 10.0,
        num_iterations: int = 5,
        downsample: int = 2,
        min_size_factor: float = 0.25,
) -> torch.Tensor:
    """Batched SLIC superpixels in torch, on the images' device.

    Follows SLIC (Achanta et al., TPAMI 2012) as scikit-image implements it: CIE LAB
    colour, distance ``d_lab^2 / compactness^2 + d_xy^2 / step^2``, centres on a regular
    grid, each pixel compared with the centres of the 3x3 grid cells around its own, then
    connectivity enforcement. Everything is batched: distances are one batched matmul
    per iteration, connected components come from min-label propagation with pointer
    jumping, components under ``min_size_factor * H*W / num_segments`` pixels join their
    largest neighbour. No Python loop runs over pixels or images.

    The clustering runs on the image average-pooled by ``downsample`` (CAST reads the ids
    on its 1/8 token grid), and the ids are brought back to full resolution by nearest
    neighbour, which keeps every region 4-connected.

    Args:
        images: (B,3,H,W) float RGB in [0, 1] (not normalised; :func:`superpixels`
            converts normalised images).
        num_segments: requested number of superpixels (>= 1); requests above one per
            pixel of the working resolution (``max(1, H // downsample) * max(1, W //
            downsample)``) are clamped to it.
        compactness: SLIC's m: larger values give more square superpixels.
        num_iterations: k-means iterations.
        downsample: integer factor of the working resolution (1 = full resolution).
        min_size_factor: minimum region size as a share of the mean superpixel size.

    Returns:
        (B,H,W) int64 ids, contiguous per image, each id one 4-connected region, at most
        ``num_segments`` per image (connectivity enforcement can split a cluster: the
        smallest regions then join their largest neighbours until the count fits).

    Raises:
        ValueError: ``images`` not (B,3,H,W) float; ``num_segments``, ``downsample``,
            ``num_iterations`` or ``compactness`` out of range.
    """
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images: expected a (B,3,H,W) float RGB tensor in [0,1], "
                         f"received shape {tuple(images.shape)} dtype {images.dtype}.")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample: expected an integer >= 1, received {downsample!r}.")
    if num_iterations < 0:
        raise ValueError(f"num_iterations: expected >= 0, received {num_iterations!r}.")
    if compactness <= 0:
        raise ValueError(f"compactness: expected > 0, received {compactness!r}.")
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) \
            or num_segments < 1:
        raise ValueError(f"num_segments: expected an integer >= 1, received "
                         f"{num_segments!r}.")
    b, _, H, W = images.shape
    # One superpixel per working pixel at most; the grid below saturates there anyway.
    num_segments = min(int(num_segments), max_superpixels(H, W, "torch_slic", int(downsample)))
    h, w = max(1, H // downsample), max(1, W // downsample)
    x = images.float()
    if (h, w) != (H, W):
        if H % downsample == 0 and W % downsample == 0:
            r = downsample
            x = x.view(b, 3, h, r, w, r).sum((3, 5)).div_(r * r)
        else:
            x = F.adaptive_avg_pool2d(x, (h, w))
    lab = _rgb_to_lab(x)
    gy, gx = _grid_shape(h, w, num_segments)
    cy, cx = 2 * -(-h // (2 * gy)), 2 * -(-w // (2 * gx))  # even cell sizes
    step = math.sqrt(h * w / (gy * gx))
    hp, wp = gy * cy, gx * cx
    yy = torch.arange(hp, device=x.device, dtype=x.dtype).view(1, 1, hp, 1).expand(b, 1, hp, wp)
    xx = torch.arange(wp, device=x.device, dtype=x.dtype).view(1, 1, 1, wp).expand(b, 1, hp, wp)
    lab = F.pad(lab, (0, wp - w, 0, hp - h))
    feat = torch.cat((lab / compactness, yy / step, xx / step), 1).contiguous()
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=x.device)
    valid[:h, :w] = True
    labels = _slic_assign(feat, valid, gy, gx, num_iterations)[:, :h, :w]
    min_size = int(min_size_factor * h * w / num_segments)
    labels = _limit_segments(enforce_connectivity(labels, min_size), num_segments)
    if (h * downsample, w * downsample) == (H, W):
        r = downsample
        labels = labels.view(b, h, 1, w, 1).expand(b, h, r, w, r).reshape(b, H, W)
    elif (h, w) != (H, W):
        rows = torch.arange(H, device=x.device) * h // H
        cols = torch.arange(W, device=x.device) * w // W
        labels = labels[:, rows][:, :, cols]
    return labels


# ----------------------------------------------------------------------------- metrics

def explained_variation(images: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Explained variation of a superpixel segmentation (Moore et al., CVPR 2008).

    The share of each image's colour variance that the per-segment mean colours explain:
    ``1 - sum_p |x_p - mean_seg(p)|^2 / sum_p |x_p - mean|^2``. 1 means every segment is
    flat-coloured.

    Args:
        images: (B,C,H,W) float (any colour space; benchmarks use RGB in [0, 1]).
        segments: (B,H,W) non-negative int64 ids.
    Returns:
        (B,) float64 tensor.
    """
    if images.dim() != 4 or segments.shape != (images.shape[0],) + images.shape[2:]:
        raise ValueError(f"segments: expected shape (B,H,W) = "
                         f"{(images.shape[0],) + tuple(images.shape[2:])} matching images "
                         f"(B,C,H,W), received {tuple(segments.shape)}.")
    b, c = images.shape[:2]
    x = images.double().flatten(2).transpose(1, 2)  # (B,N,C)
    seg = segments.long().flatten(1)
    s = int(seg.max()) + 1
    idx = seg + torch.arange(b, device=seg.device).view(b, 1) * s
    sums = torch.zeros(b * s, c, dtype=x.dtype, device=x.device).index_add_(0, idx.view(-1), x.reshape(-1, c))
    cnt = torch.bincount(idx.view(-1), minlength=b * s).clamp_min(1).to(x.dtype)
    means = (sums / cnt[:, None])[idx.view(-1)].view(b, -1, c)
    resid = ((x - means) ** 2).sum((1, 2))
    total = ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2))
    return 1 - resid / total.clamp_min(1e-12)


# ----------------------------------------------------------------------------- transform

class SuperpixelTransform:
    """Picklable data-loader transform: one normalised image -> its superpixel ids.

    Use after ``Normalize`` in a torchvision/timm pipeline, as the H-CAST data loaders
    do; with the default ``method="seeds"`` the ids equal those the CAST/H-CAST
    checkpoints were trained with.

    Args:
        num_segments, method, mean, std, **method_kwargs: as in :func:`superpixels`.

    Call:
        image (Tensor[3, H, W] float, normalised) -> Tensor[H, W] int64.
    """

    def __init__(self, num_segments: int = 196, method: str = "seeds",
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, **method_kwargs) -> None:
        self.num_segments = _check_settings(num_segments, method, mean, std)
        self.method = method
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.method_kwargs = dict(method_kwargs)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 \
                or not image.is_floating_point():
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image: expected a (3,H,W) normalised float tensor, "
                             f"received {shape}.")
        return superpixels(image[None], self.num_segments, self.method, self.mean,
                           self.std, **self.method_kwargs)[0]

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.method_kwargs.items())
        return (f"{type(self).__name__}(num_segments={self.num_segments}, "
                f"method={self.method!r}{extra})")
