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
  with batched connectivity enforcement: :func:`hcast.ops.torch_slic` in
  :mod:`hcast.ops.torch_slic`.

:class:`SuperpixelTransform` wraps the call for data loaders;
:func:`max_superpixels` says how many superpixels each method can place on an image.
Connectivity is :mod:`hcast.ops.connectivity`, the quality metric
(:func:`~hcast.ops.explained_variation`) :mod:`hcast.ops.superpixel_metrics`.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from hcast import _validation as V
from hcast.ops.torch_slic import torch_slic, working_size

__all__ = [
    "superpixels",
    "max_superpixels",
    "max_token_budget",
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
    V.check_tensor("images", images)
    if images.dim() != 4:
        raise ValueError(
            f"images must be a 4-D batch, (B, 3, H, W) normalised float or (B, H, W, 3) "
            f"uint8, got shape {tuple(images.shape)}; add a batch dimension with "
            f"images[None] for a single image.")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(
                f"images of dtype uint8 must be channels-last (B, H, W, 3) RGB, got "
                f"shape {tuple(images.shape)}.")
    elif images.is_floating_point():
        if images.shape[1] != 3:
            raise ValueError(
                f"images of a float dtype must be channels-first (B, 3, H, W), ImageNet-"
                f"normalised RGB, got shape {tuple(images.shape)}.")
    else:
        raise TypeError(
            f"images must have dtype uint8 (B, H, W, 3) or a floating dtype (B, 3, H, W), "
            f"got {images.dtype}; convert 0-255 pixels with .to(torch.uint8).")
    V.check_non_empty("images", images, "(B, 3, H, W) or (B, H, W, 3)")
    if validate_args and images.is_floating_point():
        V.check_finite("images", images)
    return images


def _check_settings(num_segments: int, method: str, mean: Sequence[float],
                    std: Sequence[float]) -> int:
    """Check the arguments shared by :func:`superpixels` and :class:`SuperpixelTransform`;
    returns ``num_segments`` as an int."""
    num_segments = V.check_int("num_segments", num_segments, 1)
    V.check_choice("method", method, METHODS)
    _check_mean_std(mean, std)
    return num_segments


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise ValueError(f"{name} must hold 3 per-channel values (RGB), got "
                             f"{len(value)}: {tuple(value)}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must hold positive values, got {tuple(std)}.")


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
        TypeError: a size or ``downsample`` that is not an int.
        ValueError: an unknown ``method``, a size under 1 or ``downsample`` under 1.
    """
    V.check_choice("method", method, METHODS)
    height, width = V.check_int("height", height, 1), V.check_int("width", width, 1)
    if method == "slic":
        return height * width
    if method == "torch_slic":
        h, w = working_size(height, width, V.check_int("downsample", downsample, 1))
        return h * w
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
    return V.check_int("height", height, 1) * V.check_int("width", width, 1)


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
        TypeError: ``images`` is not a tensor or array, or neither uint8 nor floating
            point; ``num_segments`` is not an int.
        ValueError: bad shape, ``method`` or ``mean``/``std``; an empty batch; NaN or
            infinite pixels; ``num_segments`` below 1, or for ``"seeds"`` above
            :func:`max_superpixels` for the image size (checked before OpenCV is called:
            beyond it SEEDS segfaults or hangs).
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

    Raises:
        TypeError: at construction, ``num_segments`` not an int; at call, ``image`` not
            a floating point tensor.
        ValueError: at construction, as :func:`superpixels`; at call, ``image`` not
            (3, H, W), or as :func:`superpixels`.
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
        V.check_tensor("image", image)
        V.check_floating("image", image)
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a (3, H, W) normalised float tensor, got shape "
                             f"{tuple(image.shape)}.")
        return superpixels(image[None], self.num_segments, self.method, self.mean,
                           self.std, **self.method_kwargs)[0]

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.method_kwargs.items())
        return (f"{type(self).__name__}(num_segments={self.num_segments}, "
                f"method={self.method!r}{extra})")
