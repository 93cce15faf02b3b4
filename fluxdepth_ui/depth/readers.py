"""Reading depth rasters from disk.

The format is sniffed from the first bytes, never from the extension. Each reader returns a `Raster`: every channel
the file offers, in its native sample type, plus where its data window sits in the display window. Choosing the depth
channel and interpreting it is `channels.py`'s job.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .. import limits
from ..errors import display_name
from .errors import DepthInputError

log = logging.getLogger(__name__)

MIN_SIDE = 64
MAX_ASPECT = 8.0

SUPPORTED = "OpenEXR, PNG, TIFF, PFM, NPY, JPEG or PGM"

_MAGIC = (
    (b"\x76\x2f\x31\x01", "exr"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
    (b"PF", "pfm"),
    (b"Pf", "pfm"),
    (b"P5", "pgm"),
    (b"P2", "pgm"),
)
_EXTENSIONS = {
    "exr": (".exr",),
    "png": (".png",),
    "tiff": (".tif", ".tiff"),
    "pfm": (".pfm",),
    "npy": (".npy",),
    "jpeg": (".jpg", ".jpeg"),
    "pgm": (".pgm", ".pnm"),
}
# The names depth files carry (upload filters, frame search); the content decides the format, not the name.
DEPTH_SUFFIXES = tuple(ext for exts in _EXTENSIONS.values() for ext in exts)


@dataclass(frozen=True)
class Channel:
    """One channel as stored: native dtype, data-window shape, `origin` = (x, y) of its top-left in the display window."""

    name: str
    data: np.ndarray
    sample_type: str
    part: int = 0
    origin: tuple[int, int] = (0, 0)
    part_name: str = ""  # multi-part EXR: the part's `name` attribute
    view: str = ""  # stereo EXR: the part's `view` attribute

    @property
    def label(self) -> str:
        """How menus, messages and --channel name it: `part.channel` in a multi-part file, else the name."""
        return f"{self.part_name}.{self.name}" if self.part_name else self.name


@dataclass(frozen=True)
class Raster:
    path: str
    format: str
    width: int
    height: int
    channels: tuple[Channel, ...]
    views: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    pixel_aspect: float = 1.0  # EXR pixelAspectRatio: a pixel's width over its height (anamorphic plates)

    def names(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.channels)


def check_regular_file(path: str, what: str = "file") -> None:
    """Only regular files are read: a FIFO, a device or /dev/stdin would block a worker forever (docs/sharing.md)."""
    name = display_name(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DepthInputError(f"{what} not found: {name}") from None
    except OSError as exc:
        raise DepthInputError(f"cannot read {name} ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DepthInputError(f"{name} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise DepthInputError(f"{name} is not a regular file (a pipe or a device); save the depth pass to a file")


def sniff_format(path: str) -> str:
    check_regular_file(path)
    name = display_name(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise DepthInputError(f"cannot read {name} ({exc.strerror or type(exc).__name__})") from None
    if not head:
        raise DepthInputError(f"{name} is empty (0 bytes); export the depth pass again")
    fmt = sniff_bytes(head)
    if fmt is None:
        raise DepthInputError(f"{name} is not a depth format FluxDepth can read; export {SUPPORTED}")
    return fmt


def sniff_bytes(head: bytes) -> str | None:
    """The format of a file from its first 16 bytes, or None."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            if fmt == "pfm" and head[2:3] not in (b"\n", b"\r", b" ", b"\t"):
                continue
            return fmt
    return None


def read_raster(path: str) -> Raster:
    """Read every channel of a depth file. Raises DepthInputError with a one-line message on any problem."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    notes = []
    ext = os.path.splitext(path)[1].lower()
    if ext and ext not in _EXTENSIONS[fmt]:
        notes.append(f"file content is {fmt.upper()} although the name ends in {ext}; read as {fmt.upper()}")
    reader = {
        "exr": _read_exr,
        "png": _read_pillow,
        "jpeg": _read_pillow,
        "pgm": _read_pillow,
        "tiff": _read_tiff,
        "pfm": _read_pfm,
        "npy": _read_npy,
    }[fmt]
    try:
        raster = reader(path, fmt)
    except DepthInputError:
        raise
    except MemoryError:
        raise DepthInputError(f"{display_name(path)} is too large to load in memory") from None
    except Exception:  # every decoder has its own exception zoo (and its text may name server paths)
        log.debug("decoding %s failed", path, exc_info=True)
        raise DepthInputError(
            f"{display_name(path)} looks like {fmt.upper()} but could not be decoded; "
            "the file is corrupt or truncated, export it again"
        ) from None
    if notes:
        raster = replace(raster, notes=tuple(notes) + raster.notes)
    return raster


def probe_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header only, without decoding pixels."""
    fmt = sniff_format(path)
    name = display_name(path)
    try:
        if fmt == "exr":
            import OpenEXR

            head = OpenEXR.File(path, header_only=True)
            (x0, y0), (x1, y1) = (np.asarray(v) for v in head.parts[0].header["displayWindow"])
            return int(x1 - x0 + 1), int(y1 - y0 + 1)
        if fmt in ("png", "jpeg", "pgm"):
            from PIL import Image

            with Image.open(path) as img:
                return img.size
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first  # never the page list: see _read_tiff
                return page.shape[page.axes.index("X")], page.shape[page.axes.index("Y")]
        if fmt == "npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return shape[1], shape[0]
        raster = read_raster(path)  # PFM: the header is the first line anyway
        return raster.width, raster.height
    except DepthInputError:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure is the same user problem
        raise DepthInputError(f"{name}: cannot read its header; the file is corrupt or truncated") from None


def check_pixels(width: int, height: int, name: str) -> None:
    """Called with the sizes a header declares, before any pixel is decoded."""
    bound = limits.current()
    if width <= 0 or height <= 0:
        raise DepthInputError(f"{name} declares a size of {width}x{height}; the file is corrupt, export it again")
    if width * height > bound.max_pixels:
        raise DepthInputError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), above the "
            f"{bound.megapixels} megapixel limit; render the depth pass at a lower resolution"
        )


def check_shape(width: int, height: int, name: str) -> None:
    check_pixels(width, height, name)
    if min(width, height) < MIN_SIDE:
        raise DepthInputError(
            f"{name} is {width}x{height}; depth maps need at least {MIN_SIDE} pixels on each side"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise DepthInputError(
            f"{name} is {width}x{height}, an aspect ratio above {MAX_ASPECT:.0f}:1; crop it to a normal frame"
        )


# --- OpenEXR -----------------------------------------------------------------------------------------------------

_DEPTH_LAST_TOKENS = {"z", "pz", "depth", "zfront"}


def _exr_sample_type(arr: np.ndarray) -> str:
    return {"float16": "half", "float32": "float", "uint32": "uint"}.get(arr.dtype.name, arr.dtype.name)


def _read_exr(path: str, fmt: str) -> Raster:
    import OpenEXR

    name = display_name(path)
    # Header first: refuse a huge frame before decoding any pixels.
    head = OpenEXR.File(path, header_only=True)
    if not head.parts:
        raise DepthInputError(f"{name} has no readable image parts; the EXR is corrupt or truncated")
    (x0, y0), (x1, y1) = (np.asarray(v) for v in head.parts[0].header["displayWindow"])
    width, height = int(x1 - x0 + 1), int(y1 - y0 + 1)
    check_shape(width, height, name)
    check_exr_parts(head.parts, name)
    if any("deep" in str(part.header.get("type", "")).lower() for part in head.parts):
        from .deep import read_deep_exr  # unknown sample counts: decoded in a bounded child (depth/deep.py)

        return read_deep_exr(path, fmt)
    return decode_exr(path, fmt)


def decode_exr(path: str, fmt: str) -> Raster:
    """Every part and channel, after _read_exr's header checks; deep parts are flattened (bounded by the caller)."""
    import OpenEXR

    name = display_name(path)
    head = OpenEXR.File(path, header_only=True)
    (x0, y0), (x1, y1) = (np.asarray(v) for v in head.parts[0].header["displayWindow"])
    width, height = int(x1 - x0 + 1), int(y1 - y0 + 1)
    channels: list[Channel] = []
    notes: list[str] = []
    views: tuple[str, ...] = ()
    metadata: dict = {}
    with OpenEXR.File(path, separate_channels=True) as exr:
        if not exr.parts:
            raise DepthInputError(f"{name} has no readable image parts; the EXR is corrupt or truncated")
        multi = len(exr.parts) > 1
        for index, part in enumerate(exr.parts):
            header = part.header
            part_name = _text(header.get("name", "")) if multi else ""
            part_view = _text(header.get("view", ""))
            storage = str(header.get("type", "")).lower()
            (dx0, dy0), _ = (np.asarray(v) for v in header["dataWindow"])
            origin = (int(dx0 - x0), int(dy0 - y0))
            views = views or tuple(header.get("multiView", ()) or ())
            for key, value in header.items():
                if isinstance(value, (str, bytes)):
                    metadata[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            deep = "deep" in storage
            # The dict from channels() is emptied when the `with` block exits; the arrays own their data, so
            # keeping references (no copy) is enough.
            for cname, chan in part.channels.items():
                pixels = chan.pixels
                if pixels is None:
                    continue
                if deep:
                    pixels = _flatten_deep(pixels, front_most=cname.lower().split(".")[-1] in _DEPTH_LAST_TOKENS,
                                           name=name)
                channels.append(Channel(cname, pixels, _exr_sample_type(pixels), index, origin,
                                        part_name or (f"part{index}" if multi else ""), part_view))
            if deep:
                notes.append(f"deep EXR part {index}: flattened to the front-most sample per pixel")
    if not channels:
        raise DepthInputError(f"{name} holds no pixel channels; export the depth pass again")
    aspect = head.parts[0].header.get("pixelAspectRatio", 1.0)
    try:
        aspect = float(aspect)
    except (TypeError, ValueError):
        aspect = 1.0
    return Raster(path, fmt, width, height, tuple(channels), views, metadata, tuple(notes),
                  aspect if np.isfinite(aspect) and aspect > 0 else 1.0)


def _window_size(window) -> tuple[int, int]:
    (x0, y0), (x1, y1) = (np.asarray(v) for v in window)
    return int(x1 - x0 + 1), int(y1 - y0 + 1)


def check_exr_parts(parts, name: str) -> None:
    """What the decoder will allocate is set by the data windows, not the display window: bound every part's
    window and all channels of all parts together, from the headers alone."""
    total = 0
    for part in parts:
        w, h = _window_size(part.header["dataWindow"])
        check_pixels(w, h, f"{name} (data window of part {part.part_index})")
        total += w * h * 4 * max(1, len(part.header.get("channels", ())))  # decoded as up to 4 bytes a sample
    bound = limits.current()
    if total > bound.max_decoded_bytes:
        raise DepthInputError(
            f"{name} would decode to {total / 2**20:.0f} MB over all its parts and channels, above the "
            f"{bound.decoded_mb} MB limit; export only the depth AOV, or fewer channels"
        )


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _flatten_deep(samples: np.ndarray, front_most: bool, name: str = "deep EXR") -> np.ndarray:
    """Per-pixel sample arrays -> one value: the smallest depth for depth channels, the first sample otherwise."""
    flat = samples.ravel()
    counts = np.fromiter((0 if s is None else len(s) for s in flat), dtype=np.int64, count=flat.size)
    total = int(counts.sum()) * 4
    if total > limits.current().max_decoded_bytes:  # the samples count toward the decoded-bytes limit too
        raise DepthInputError(f"{name} holds {total / 2**20:.0f} MB of deep samples in one channel, above the "
                              f"{limits.current().decoded_mb} MB limit; export a flat depth AOV")
    out = np.full(flat.size, np.nan, dtype=np.float32)
    filled = counts > 0
    if filled.any():
        values = np.concatenate([np.asarray(s, dtype=np.float32) for s in flat[filled]])
        starts = np.concatenate(([0], np.cumsum(counts[filled])[:-1]))
        out[filled] = np.minimum.reduceat(values, starts) if front_most else values[starts]
    return out.reshape(samples.shape)


# --- Pillow formats (PNG, JPEG, PGM) -----------------------------------------------------------------------------


def _read_pillow(path: str, fmt: str) -> Raster:
    from PIL import Image

    name = display_name(path)
    notes: list[str] = []
    with warnings.catch_warnings():
        # check_shape (a lower limit, with a clearer message) runs before any pixel is decoded.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open_image(path, name) as img:
            check_shape(img.width, img.height, name)
            img.load()
            mode = img.mode
            if fmt == "png" and mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
                notes.append(
                    "16-bit colour PNG: Pillow keeps only 8 bits of it; save depth as 16-bit greyscale PNG or EXR"
                )
            if mode == "CMYK":
                img = img.convert("L")
                notes.append("CMYK image converted to grey")
            elif mode in ("P", "PA"):
                img = img.convert("RGBA")  # palette indices are not intensities
            elif mode in ("1", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if mode == "1" else "RGB")
            mode = img.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                arr = np.array(img).astype(np.uint16)  # never convert("L"): it clips everything above 255
            else:
                arr = np.array(img)
    if fmt == "jpeg":
        notes.append("JPEG is lossy and 8-bit: expect banding and block artefacts; export 16-bit PNG or EXR")
    if arr.dtype == np.int32 and arr.size and 0 <= arr.min() and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # Pillow mode "I" for 16-bit PGM/PNG
    if fmt == "pgm" and arr.dtype == np.uint16:
        arr, swapped = _fix_byte_order(arr)
        if swapped:
            notes.append("16-bit PGM was written little-endian (Netpbm says big-endian): bytes swapped back")
    return Raster(path, fmt, arr.shape[1], arr.shape[0], _band_channels(arr, mode), notes=tuple(notes))


def _open_image(path: str, name: str):
    """Pillow's open, whose own bomb guard (far above ours) is reported like ours."""
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        raise DepthInputError(f"{name} is larger than the {limits.current().megapixels} megapixel limit; render it "
                              "at a lower resolution") from None


def _png_bit_depth(path: str) -> int:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[24] if len(head) >= 25 else 8


def _fix_byte_order(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """A byte-swapped 16-bit map turns smooth gradients into noise: keep the byte order with less row-to-row jitter."""
    swapped = arr.byteswap()
    rough = np.abs(np.diff(arr.astype(np.int64), axis=1)).mean()
    rough_swapped = np.abs(np.diff(swapped.astype(np.int64), axis=1)).mean()
    if rough_swapped * 4 < rough:
        return swapped, True
    return arr, False


def _band_channels(arr: np.ndarray, mode: str | None = None) -> tuple[Channel, ...]:
    sample = arr.dtype.name
    if arr.ndim == 2:
        return (Channel("Y", arr, sample),)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return (Channel("Y", arr[..., 0], sample),)
    if arr.ndim == 3 and arr.shape[2] == 2:
        return (Channel("Y", arr[..., 0], sample), Channel("A", arr[..., 1], sample))
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        names = "RGBA"[: arr.shape[2]]
        return tuple(Channel(n, np.ascontiguousarray(arr[..., i]), sample) for i, n in enumerate(names))
    raise DepthInputError(f"unsupported pixel layout {arr.shape} (mode {mode}); export a greyscale depth image")


# --- TIFF, PFM, NPY ----------------------------------------------------------------------------------------------


def _read_tiff(path: str, fmt: str) -> Raster:
    import tifffile

    name = display_name(path)
    with tifffile.TiffFile(path) as tif:
        # The first page only: a depth pass is one image, and reading the page list (tif.pages, tif.series) walks
        # every page of the file first, in time that grows with the square of the page count (issue 24: a 37 MB
        # file of 50,000 pages held a preview for minutes).
        page = tif.pages.first
        axes, shape = page.axes, page.shape
        if "Y" not in axes or "X" not in axes:
            raise DepthInputError(f"{name}: TIFF layout {axes} has no image plane; export a single depth image")
        check_shape(shape[axes.index("X")], shape[axes.index("Y")], name)
        decoded = int(np.prod(shape, dtype=np.int64)) * page.dtype.itemsize
        if decoded > limits.current().max_decoded_bytes:
            raise DepthInputError(f"{name} would decode to {decoded / 2**20:.0f} MB (a volume), above the "
                                  f"{limits.current().decoded_mb} MB limit; save a single depth image")
        arr = page.asarray()
    # Keep the first plane of any volume; move samples last.
    for ax in list(axes):
        if ax not in "YXS":
            arr = np.take(arr, 0, axis=axes.index(ax))
            axes = axes.replace(ax, "")
    if "S" in axes and axes.index("S") == 0:
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype.kind == "b":
        raise DepthInputError(f"{name} is a 1-bit mask, not a depth map")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return Raster(path, fmt, arr.shape[1], arr.shape[0], _band_channels(arr))


def _read_pfm(path: str, fmt: str) -> Raster:
    name = display_name(path)
    with open(path, "rb") as fh:
        tokens: list[bytes] = []
        while len(tokens) < 4:
            line = fh.readline()
            if not line:
                raise DepthInputError(f"{name}: PFM header is incomplete; the file is truncated")
            tokens += line.split()
        kind, width, height, scale = tokens[0], int(tokens[1]), int(tokens[2]), float(tokens[3])
        check_shape(width, height, name)
        bands = 3 if kind == b"PF" else 1
        dtype = "<f4" if scale < 0 else ">f4"
        data = np.fromfile(fh, dtype=dtype, count=width * height * bands)
    if data.size != width * height * bands:
        raise DepthInputError(f"{name}: PFM holds {data.size} values, expected {width * height * bands}; truncated")
    # PFM stores rows bottom to top.
    arr = data.astype(np.float32).reshape(height, width, bands)[::-1]
    return Raster(path, fmt, width, height, _band_channels(np.ascontiguousarray(arr)))


def _read_npy(path: str, fmt: str) -> Raster:
    name = display_name(path)
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise DepthInputError(f"{name}: array of shape {arr.shape} is not an image; save an (H, W) depth array")
    if arr.dtype.kind not in "fiu":
        raise DepthInputError(f"{name}: array of type {arr.dtype} is not numeric depth; save float32 depth")
    check_shape(arr.shape[1], arr.shape[0], name)
    arr = np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype)
    return Raster(path, fmt, arr.shape[1], arr.shape[0], _band_channels(arr))


# --- colour images (init images) -----------------------------------------------------------------------------------


def read_rgb_image(path: str, what: str = "init image"):
    """A PNG, JPEG or TIFF as a Pillow RGB image, after the same file and size checks as a depth file."""
    from PIL import Image

    name = display_name(path)
    check_regular_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(path, f"{what} {name}") as img:
                check_shape(img.width, img.height, f"{what} {name}")
                img.load()
                return img.convert("RGB")
    except DepthInputError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's many decoder errors are one problem for the artist
        raise DepthInputError(f"{what} {name} cannot be read as an image; use a PNG, JPEG or TIFF") from None
