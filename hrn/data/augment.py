"""The paper's image transforms (design §4), split where it pays.

    train: Resize(S, S) -> RandomCrop(crop, padding) -> RandomHorizontalFlip -> ToTensor -> Normalize(0.5, 0.5)
    test:  Resize(S, S) -> CenterCrop(crop)                                   -> ToTensor -> Normalize(0.5, 0.5)

Resize is deterministic, so every image source holds or makes images already resized, as uint8 (3, S, S):
decoded per sample, read from the on-disk cache (``hrn.data.cache``) or held in memory. The crop and the flip
are drawn per sample from (seed, epoch, index) alone (:meth:`Augment.params`), so an epoch repeats exactly
however it was reached (resume, any number of workers), and applied while the image is read: :func:`window` copies
just the crop window, mirrored when flipped, out of the resized image (from the cache's memory map that is the
only read), so a loader moves uint8 (3, crop, crop), a third fewer bytes than the resized image and a quarter of
the float one. The float work, :func:`normalize`, runs on whole batches on the training device.
:func:`reference_train_transform` is the whole transform of one image with torchvision's own ops; the tests hold
the two paths equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hrn.errors import HRNError

__all__ = [
    "Augment",
    "default_padding",
    "downsample",
    "EvalTransform",
    "eval_transform",
    "mix_seeds",
    "normalize",
    "reference_train_transform",
    "resize_image",
    "window",
]

MEAN = STD = 0.5  # Normalize(0.5, 0.5), as the authors


def default_padding(crop: int) -> int:
    """The crop padding when a config leaves it unset: the paper's 8 px at 448 px, scaled with the crop (1 px at
    32 px, 4 px at 224 px). A fixed 8 px would shift a 32 px image by a quarter of its width."""
    return max(1, round(8 * crop / 448))


@dataclass(frozen=True)
class Augment:
    """Sizes of the paper's transforms: images resized to ``resize`` x ``resize``; training crops ``crop`` x
    ``crop`` at random from the image padded by ``padding`` on each side and flips half of them; testing takes the
    centre crop."""

    resize: int
    crop: int
    padding: int
    flip: bool = True

    def __post_init__(self) -> None:
        if self.crop > self.resize or min(self.crop, self.resize) < 1 or self.padding < 0:
            raise HRNError(
                f"dataset.crop={self.crop}, dataset.resize={self.resize}, dataset.padding={self.padding}: need "
                "1 <= crop <= resize and padding >= 0 (the paper: resize 550, crop 448, padding 8)"
            )

    def params(self, seed: int, epoch: int, index: int) -> tuple[int, int, int]:
        """(top, left, flip) of sample ``index`` in ``epoch``: crop offsets in the padded image, flip 0 or 1.

        A function of its arguments alone, mixed into 64 random bits by :func:`mix_seeds`: 21 bits for each offset,
        the top bit for the flip. Seeding a ``random.Random`` per sample did the same at about six times the cost,
        more than copying a small image's window.
        """
        bits = mix_seeds(seed, epoch, index)
        positions = self.resize + 2 * self.padding - self.crop + 1
        # a modulus of a 21-bit number: offsets less likely by at most positions / 2**21 (< 1e-4 at 448 px)
        top, left = (bits & _BITS21) % positions, ((bits >> 21) & _BITS21) % positions
        return top, left, int(self.flip and bits >> 63)

    def centre(self) -> tuple[int, int, int]:
        """The test window: the centre crop (offsets rounded as torchvision's CenterCrop rounds them, shifted by
        the padding that :func:`window` expects), no flip."""
        offset = int(round((self.resize - self.crop) / 2.0)) + self.padding
        return offset, offset, 0


_MASK64 = (1 << 64) - 1
_BITS21 = (1 << 21) - 1


def mix_seeds(*parts: int) -> int:
    """Integers (a seed, an epoch, an index; any sign) -> 64 random bits that depend on every one of them and on
    their order: each part is folded in and mixed by :func:`_mix64`. Arithmetic, unlike Python's ``hash`` of a
    tuple, under which ``hash(-1) == hash(-2)`` and two seeds would draw the same crops."""
    x = 0
    for part in parts:
        x = _mix64(x ^ (int(part) & _MASK64))
    return x


def _mix64(x: int) -> int:
    """A 64-bit integer -> 64 well-mixed bits: the splitmix64 generator's output function (Steele, Lea and Flood,
    2014), whose every output bit depends on every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def window(
    image: np.ndarray | torch.Tensor, box: tuple[int, int, int], augment: Augment, out: np.ndarray
) -> np.ndarray:
    """Copy the crop window ``box = (top, left, flip)`` (offsets in the padded image, see
    :meth:`Augment.params`) of a resized image (3, S, S), or (1, S, S) for grey, into ``out`` (3, crop, crop)
    uint8 (a grey window fills all three channels), mirrored when ``flip``; where the window reaches into the
    padding, zeros (as RandomCrop's default fill). Reads nothing outside the window, so from a memory map this is
    the only read."""
    top, left, flip = box
    size, crop, pad = augment.resize, augment.crop, augment.padding
    t0, l0 = top - pad, left - pad  # window origin in image coordinates (may be negative: padding)
    r0, r1, c0, c1 = max(t0, 0), min(t0 + crop, size), max(l0, 0), min(l0 + crop, size)
    if (r0, r1, c0, c1) != (t0, t0 + crop, l0, l0 + crop):
        out[...] = 0
    src = np.asarray(image[:, r0:r1, c0:c1])
    dr0, dr1, dc0, dc1 = r0 - t0, r1 - t0, c0 - l0, c1 - l0
    if flip:
        src, dc0, dc1 = src[:, :, ::-1], crop - dc1, crop - dc0
    out[:, dr0:dr1, dc0:dc1] = src
    return out


def downsample(image: Image.Image | torch.Tensor, scale: float) -> Image.Image | torch.Tensor:
    """Bilinear downsample by ``scale`` (the paper's low-resolution protocol), before the usual transforms."""
    h, w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    return TF.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W): ToDtype(scale=True) then Normalize(0.5, 0.5), the same float ops
    in the same order (so the numbers equal torchvision's), in place after one conversion (out of place the
    three ops cost four times as much on a CPU)."""
    return images.to(torch.float32).mul_(1.0 / 255).sub_(MEAN).div_(STD)


def resize_image(image: Image.Image | torch.Tensor, size: int) -> torch.Tensor:
    """The deterministic Resize(size, size): a PIL image (PIL's antialiased bilinear, as torchvision does for PIL
    input) or a uint8 (C, H, W) tensor -> uint8 (3, size, size); grey images get three equal channels."""
    if isinstance(image, Image.Image):
        if image.size != (size, size):
            image = TF.resize(image, [size, size], antialias=True)
        out = TF.pil_to_tensor(image.convert("RGB"))
    else:
        out = image
        if tuple(out.shape[-2:]) != (size, size):
            out = TF.resize(out, [size, size], antialias=True)
        if out.shape[0] == 1:
            out = out.expand(3, -1, -1)
    return out.contiguous()


def reference_train_transform(
    image: Image.Image | torch.Tensor, augment: Augment, params: tuple[int, int, int]
) -> torch.Tensor:
    """The training transform of one image with torchvision's per-image ops, at given (top, left, flip): the
    reference that :func:`window` then :func:`normalize` must equal. -> float (3, crop, crop)."""
    top, left, flip = params
    x = resize_image(image, augment.resize)
    if augment.padding:
        x = TF.pad(x, [augment.padding])
    x = TF.crop(x, top, left, augment.crop, augment.crop)
    if flip:
        x = TF.horizontal_flip(x)
    return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), [MEAN] * 3, [STD] * 3)


class EvalTransform:
    """The test transform of single images (``hrn.predict``, ``hrn.gradcam``, exports' checks): PIL image or uint8
    (C, H, W) tensor -> float (3, crop, crop). Resize(resize, resize) -> CenterCrop(crop) -> Normalize(0.5, 0.5),
    through the very functions the datasets use (:func:`resize_image`: PIL's resize for a PIL image, as when the
    dataset or its cache decodes a file; then the crop and :func:`normalize` the LightningModule applies), so a
    file gets the same numbers from ``hrn.predict`` as from ``hrn.evaluate``."""

    def __init__(self, resize: int = 550, crop: int = 448) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = TF.center_crop(resize_image(image, self.resize), [self.crop, self.crop])
        return normalize(x[None])[0]

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop})"


def eval_transform(resize: int = 550, crop: int = 448) -> EvalTransform:
    """:class:`EvalTransform` at these sizes."""
    return EvalTransform(resize, crop)
