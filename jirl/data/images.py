"""Reading images and masks for every data source (iHarmony4 builder, own folders, users' photos).

Decoding rules, shared so that every source sees a file the same way:

* files are decoded fully with PIL (truncated files fail instead of being padded);
* the EXIF Orientation tag is honoured after decoding (``PIL.ImageOps.exif_transpose`` semantics), so
  a phone photo and its mask line up as they are displayed;
* images become uint8 RGB [H, W, 3]: grey, RGBA, palette, 16-bit and CMYK files are converted;
* masks become uint8 [H, W, 1] in {0, 255}: > 127 of 8 bits (half the maximum of wider types);
* a file whose header announces more than ``max_pixels`` (default ``MAX_PIXELS``, 50 MP) is refused
  before decoding (``TooLargeError``; ``check_pixels`` makes the same check alone), so a small file
  of huge dimensions cannot take the memory; PIL's own decompression-bomb error above that counts
  as one too.

Every conversion is described in ``LoadedImage.conversions``; unusable files raise ``BadImageError``.
The module itself uses only numpy, PIL and etils, so inference can read users' photos with it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from typing import IO

import numpy as np
from etils import epath
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".PNG", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_FORMATS = ("png", "jpeg")  # encodings of stored images
MAX_PIXELS = 50_000_000  # the largest image decoded by default (50 MP: every common camera)

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(Exception):
    """A file that cannot be used (missing, undecodable, truncated, unsupported)."""


class MissingFileError(BadImageError):
    """The file does not exist."""


class TooLargeError(BadImageError):
    """An image whose header announces more pixels than allowed (refused before decoding);
    `width` and `height` as announced (None past PIL's own ceiling, which does not say)."""

    def __init__(self, message: str, width: int | None = None, height: int | None = None):
        super().__init__(message)
        self.width, self.height = width, height


def _open_header(stream: IO[bytes], max_pixels: int | None) -> Image.Image:
    """PIL's lazily opened image of `stream` (nothing decoded yet) when its header's width x height
    is at most `max_pixels` (None: no limit of jirl's); else TooLargeError."""
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # checked below: PIL's warning-only default is not the limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as e:  # PIL's own ceiling, above any sensible max_pixels
        raise TooLargeError(f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP ({e})") from e
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:  # (the stream's opener closes it)
        size = f" ({width * height / 1e6:.3g} MP)" if width * height >= 1e6 else ""
        limit = f"{max_pixels / 1e6:.3g} MP" if max_pixels >= 1e6 else f"{max_pixels:,} pixels"
        raise TooLargeError(f"{width}x{height} pixels{size}, more than the {limit} allowed",
                            width, height)
    return image


def check_pixels(source: epath.PathLike | bytes | IO[bytes], max_pixels: int | None = MAX_PIXELS
                 ) -> tuple[int, int] | None:
    """(width, height) of an image (a path, its bytes or an open binary file, left open and
    rewound) read from its header alone; TooLargeError above `max_pixels`; None when PIL cannot
    read the header (decoding says why)."""
    if hasattr(source, "read"):
        position = source.tell()
        try:
            return _header_size(source, max_pixels)
        finally:
            source.seek(position)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else epath.Path(
            source).open("rb")
    except OSError:
        return None
    with stream:
        return _header_size(stream, max_pixels)


def _header_size(stream: IO[bytes], max_pixels: int | None) -> tuple[int, int] | None:
    """`check_pixels` of an open stream (which its opener closes: closing PIL's image would
    close a caller's file too)."""
    try:
        return _open_header(stream, max_pixels).size
    except TooLargeError:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many types for bad data.
        return None


def encode_image(array: np.ndarray, image_format: str = "png") -> io.BytesIO:
    """Encodes a uint8 [H, W, C] array (C = 1 or 3) with PIL into a rewound buffer.

    TFDS can only encode numpy arrays with TensorFlow; encoded file objects keep builders TF-free.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 [H, W, 1|3] array, got {array.dtype} {array.shape}")
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    buffer.seek(0)
    return buffer


@dataclasses.dataclass
class LoadedImage:
    """A decoded file: the array, what was converted, and the bytes when they can be stored as is."""

    array: np.ndarray  # uint8 [H, W, 3] (images) or [H, W, 1] in {0, 255} (masks)
    conversions: list[str]
    original: bytes | None = None  # the file's bytes when they can be stored unchanged

    def encoded(self) -> io.BytesIO:
        """The bytes to store: the original file, or a PNG re-encoding."""
        if self.original is not None:
            return io.BytesIO(self.original)
        return encode_image(self.array, "png")


@dataclasses.dataclass
class _Decoded:
    image: Image.Image  # upright (EXIF orientation applied)
    data: bytes  # the file's bytes
    file_format: str | None  # PIL's name of the file format ("JPEG", "PNG", ...)
    wide: bool  # decoded from 16-bit RGB(A)
    conversions: list[str]  # so far: the orientation, if one was applied


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as by exif_transpose.
        return 1


def _open(path: epath.PathLike, max_pixels: int | None = MAX_PIXELS) -> _Decoded:
    """Reads ``path``, checks its size from the header (``max_pixels``), decodes it fully and
    applies its EXIF orientation; else BadImageError (TooLargeError when too large)."""
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise MissingFileError("missing file") from e
    except OSError as e:
        raise BadImageError(f"unreadable file ({type(e).__name__}: {e})") from e
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would pass")
    try:
        image = _open_header(io.BytesIO(data), max_pixels)
        file_format = image.format
        # PIL reads 16-bit RGB(A) PNGs as 8-bit RGB(A); the raw mode of the tile says so.
        wide = image.mode in ("RGB", "RGBA") and any(
            ";16" in str(getattr(tile, "args", "")) for tile in image.tile
        )
        image.load()  # Full decode: truncated files raise here.
        conversions = []
        orientation = _orientation(image)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
            conversions.append(f"EXIF orientation {orientation} applied")
    except TooLargeError:
        raise
    except UnidentifiedImageError as e:
        raise BadImageError("cannot decode (not a recognised image format)") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data.
        raise BadImageError(f"cannot decode ({type(e).__name__}: {e})") from e
    if image.width < 1 or image.height < 1:
        raise BadImageError(f"empty image ({image.width}x{image.height})")
    return _Decoded(image, data, file_format, wide, conversions)


def _sixteen_to_eight(array: np.ndarray) -> np.ndarray:
    array = np.clip(array.astype(np.int64), 0, 65535)
    return ((array * 255 + 32767) // 65535).astype(np.uint8)


def _rgb_array(image: Image.Image, wide: bool = False) -> tuple[np.ndarray, list[str]]:
    """An upright PIL image as uint8 [H, W, 3] and the conversions that took (see module doc)."""
    mode = image.mode
    conversions = []
    if mode == "RGB":
        array = np.asarray(image, dtype=np.uint8)
        if wide:
            conversions.append("16-bit RGB->8-bit")
    elif mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_to_eight(np.asarray(image))
        array = np.repeat(grey[..., None], 3, axis=-1)
        conversions.append(f"16-bit grey ({mode})->8-bit RGB")
    elif mode in ("L", "1", "LA"):
        array = np.asarray(image.convert("L"), dtype=np.uint8)
        array = np.repeat(array[..., None], 3, axis=-1)
        conversions.append(f"{'grey' if mode == 'L' else mode}->RGB")
    elif mode == "RGBA":
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        conversions.append("RGBA->RGB (alpha dropped)" + (" 16-bit->8-bit" if wide else ""))
    elif mode in ("P", "PA"):
        array = np.asarray(image.convert("RGBA").convert("RGB"), dtype=np.uint8)
        conversions.append("palette->RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        conversions.append(f"{mode}->RGB")
    else:
        raise BadImageError(f"unsupported image mode {mode!r}")
    return np.ascontiguousarray(array), conversions


def load_rgb(path: epath.PathLike, max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    """An image as uint8 [H, W, 3], upright, converting grey/RGBA/palette/16-bit/CMYK; else BadImageError.

    ``original`` holds the file's bytes only for a JPEG/PNG that needed no conversion at all; a
    file over ``max_pixels`` raises TooLargeError before it is decoded.
    """
    decoded = _open(path, max_pixels)
    array, converted = _rgb_array(decoded.image, decoded.wide)
    conversions = [*decoded.conversions, *converted]
    stored_as_is = not conversions and decoded.file_format in ("JPEG", "PNG")
    if not conversions and not stored_as_is:
        conversions.append(f"{decoded.file_format}->PNG")
    return LoadedImage(array, conversions, decoded.data if stored_as_is else None)


def as_rgb(image) -> np.ndarray:
    """A photo given as a path, a PIL image or an array, as uint8 [H, W, 3] (inference's input).

    Paths and PIL images follow ``load_rgb``'s rules (EXIF orientation, grey/RGBA/palette/16-bit
    converted). Arrays are height x width x channels (HWC, not CHW), channels in RGB order (an
    OpenCV ``cv2.imread`` array is BGR: reverse it, ``img[..., ::-1]``): uint8, uint16 (scaled to
    8 bits) or floats in [0, 1]; [H, W] grey, [H, W, 1|3|4] (alpha dropped). Anything else raises
    BadImageError naming what it got; a file's error names the file.
    """
    if isinstance(image, str | os.PathLike | epath.Path):
        try:
            return load_rgb(image).array
        except BadImageError as e:
            raise type(e)(f"{os.fspath(image)}: {e}") from e
    if isinstance(image, Image.Image):
        if _orientation(image) in range(2, 9):
            image = ImageOps.exif_transpose(image)
        return _rgb_array(image)[0]
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise BadImageError(f"expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, got "
                            f"shape {array.shape}")
    if array.dtype == np.uint16:
        array = _sixteen_to_eight(array)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise BadImageError("a float image must hold finite values in [0, 1]")
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise BadImageError(f"unsupported image dtype {array.dtype} (use uint8, uint16 or floats "
                            "in [0, 1])")
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def load_mask(path: epath.PathLike, size: tuple[int, int] | None = None,
              max_pixels: int | None = MAX_PIXELS) -> LoadedImage:
    """A mask as uint8 [H, W, 1] in {0, 255}, upright: > 127 of 8 bits (half the maximum of wider types).

    ``size`` (height, width): resize to it with nearest neighbour when the (upright) mask differs;
    a file over ``max_pixels`` raises TooLargeError before it is decoded.
    """
    decoded = _open(path, max_pixels)
    image, mode, wide = decoded.image, decoded.image.mode, decoded.wide
    conversions = list(decoded.conversions)
    if mode == "1":
        fg = np.asarray(image, dtype=bool)
    elif mode in _SIXTEEN_BIT_MODES:
        fg = np.asarray(image).astype(np.int64) > 32767
        conversions.append(f"16-bit mask ({mode})->8-bit")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        fg = values > (0.5 if values.max(initial=0.0) <= 1.0 else 127.5)
        conversions.append("float mask->8-bit")
    else:
        if mode == "L":
            grey = np.asarray(image, dtype=np.uint8)
        elif mode in ("LA", "La"):
            grey = np.asarray(image.getchannel(0), dtype=np.uint8)
            conversions.append(f"{mode}->L (alpha dropped)")
        elif mode in ("P", "PA"):
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
            conversions.append("palette->L")
        elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            grey = np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8)
            conversions.append(f"{mode}->L")
        else:
            raise BadImageError(f"unsupported mask mode {mode!r}")
        if wide:
            conversions.append("16-bit->8-bit")
        fg = grey > 127
        values = np.unique(grey)
        if not np.isin(values, (0, 255)).all():
            conversions.append(f"binarized at >127 ({len(values)} grey levels)")
    mask = np.where(fg, np.uint8(255), np.uint8(0))
    if size is not None and mask.shape != tuple(size):
        height, width = size
        conversions.append(
            f"mask resized {mask.shape[1]}x{mask.shape[0]}->{width}x{height} (nearest neighbour)"
        )
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    return LoadedImage(np.ascontiguousarray(mask[..., None]), conversions, None)


def find_with_extensions(
    directory: epath.Path, stem: str, preferred: str, extensions: tuple[str, ...]
) -> epath.Path:
    """``directory/stem+preferred`` if it exists, else the first ``stem+ext`` that exists (else the first)."""
    first = directory / f"{stem}{preferred}"
    if first.exists():
        return first
    for ext in extensions:
        candidate = directory / f"{stem}{ext}"
        if candidate.exists():
            return candidate
    return first


def is_image_file(path: epath.Path) -> bool:
    """A visible regular file with an image extension."""
    return (
        path.is_file()
        and os.path.splitext(path.name)[1].lower() in {e.lower() for e in IMAGE_EXTENSIONS}
        and not path.name.startswith(".")
    )
