"""Reading and writing the PNG files of a dataset, with errors that name the file.

Convention: images are ``uint8`` arrays ``(H, W, 3)`` (RGB); label maps (instance or class ids) are
``uint8`` arrays ``(H, W)`` written as 8-bit grayscale PNGs whose pixel value is the id, as upstream
reads them (``Image.open(...).convert("L")``).
"""
from __future__ import annotations

import os
import pathlib
import struct
import zlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def require_dir(path: str | os.PathLike, what: str = "dataset folder") -> pathlib.Path:
    """``path`` as a Path; ``FileNotFoundError`` naming it when it is not a directory."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_image(path: str | os.PathLike, mode: str = "RGB", size: Optional[tuple[int, int]] = None,
               resample: int = Image.BILINEAR) -> np.ndarray:
    """Decode one image file.

    Args:
        path: the file.
        mode: PIL mode to convert to ("RGB" → ``(H, W, 3)``, "L" → ``(H, W)``).
        size: ``(H, W)`` to resize to (None: as stored).
        resample: PIL filter for the resize (``Image.NEAREST`` for label maps).

    Returns:
        ``uint8`` array ``(H, W, 3)`` or ``(H, W)``.

    Raises:
        FileNotFoundError: the file is missing (the message names it).
        ValueError: the file is not a readable image (truncated, corrupt; the message names it).
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), resample)
    return np.array(im, dtype=np.uint8)


def read_label_map(path: str | os.PathLike, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Decode a label PNG (ids as gray levels) to ``uint8 (H, W)``; nearest-neighbour resize."""
    return read_image(path, "L", size, Image.NEAREST)


def list_images(folder: str | os.PathLike, recursive: bool = False,
                extensions: Sequence[str] = IMG_EXTENSIONS) -> list[pathlib.Path]:
    """The image files of ``folder`` (sorted; hidden files skipped); ``FileNotFoundError`` if it is missing."""
    folder = require_dir(folder, "image folder")
    it = folder.rglob("*") if recursive else folder.iterdir()
    exts = {e.lower() for e in extensions}
    return sorted(p for p in it if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(array: np.ndarray, level: int = 6) -> bytes:
    """Encode ``uint8 (H, W, 3)`` (RGB) or ``uint8 (H, W)`` (8-bit gray) as PNG bytes.

    A minimal encoder (no filtering, one IDAT chunk): for the small images of the generators it is
    ~10× faster than PIL's per-call overhead; any PNG reader decodes it.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"encode_png expects uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    h, w = array.shape[:2]
    rows = np.ascontiguousarray(array).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if array.ndim == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw, level)) + _png_chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, array: np.ndarray, level: int = 6) -> None:
    """Write ``uint8 (H, W, 3)`` as an RGB PNG or ``uint8 (H, W)`` as an 8-bit grayscale PNG."""
    data = encode_png(array, level)
    with open(path, "wb") as f:
        f.write(data)


def decode_many(paths: Sequence[str | os.PathLike], mode: str = "RGB", size: Optional[tuple[int, int]] = None,
                resample: int = Image.BILINEAR, out: Optional[np.ndarray] = None, workers: Optional[int] = None,
                desc: Optional[str] = None, crop: bool = False) -> np.ndarray:
    """Decode many images into one ``uint8`` array ``(N, H, W, 3)`` (RGB) or ``(N, H, W)`` (L).

    PIL releases the GIL while decoding, so a thread pool scales with the cores. All images must have
    the same size unless ``size`` is given. ``crop``: resize the shorter side to fit ``size`` and crop
    the centre (otherwise resize to exactly ``size``). ``out``: an array (e.g. a writable memmap) to fill.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if len(paths) == 0:
        raise ValueError("decode_many: no files given")
    read = (lambda p: read_image_fit(p, mode, size, resample)) if crop else (lambda p: read_image(p, mode, size,
                                                                                                   resample))
    first = read(paths[0])
    if out is None:
        out = np.empty((len(paths), *first.shape), np.uint8)
    out[0] = first

    def fill(i: int) -> None:
        a = read(paths[i])
        if a.shape != first.shape:
            raise ValueError(f"image {paths[i]} has shape {a.shape}, expected {first.shape} like {paths[0]}")
        out[i] = a

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc=desc, unit="img", disable=None,
                                                    leave=False) as bar:
        for start in range(1, len(paths), 4096):
            for _ in pool.map(fill, range(start, min(len(paths), start + 4096))):
                bar.update(1)
    return out


def read_image_fit(path: str | os.PathLike, mode: str, size: Optional[tuple[int, int]],
                   resample: int = Image.BILINEAR) -> np.ndarray:
    """Like :func:`read_image`, but scale the shorter side to fit ``size`` (H, W) and crop the centre."""
    a = read_image(path, mode)
    if size is None or a.shape[:2] == tuple(size):
        return a
    h, w = a.shape[:2]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    im = Image.fromarray(a)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), resample)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return np.asarray(im.crop((left, top, left + size[1], top + size[0])), dtype=np.uint8)
