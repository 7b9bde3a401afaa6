"""A job's PNG in the format a client asked for: the PNG as the runner wrote it (its
infotext in a `parameters` chunk), or JPEG or WebP with the infotext in the EXIF
UserComment, where AUTOMATIC1111 puts it and the tools that read its images look."""

from __future__ import annotations

import io

from PIL import Image

# Answer formats: the name clients send -> (Pillow's format, file suffix, media type).
FORMATS = {
    "png": ("PNG", "png", "image/png"),
    "jpeg": ("JPEG", "jpeg", "image/jpeg"),
    "jpg": ("JPEG", "jpeg", "image/jpeg"),
    "webp": ("WEBP", "webp", "image/webp"),
}
# EXIF's UserComment tag, in its Exif IFD; text in it starts with its character code.
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
# A JPEG's EXIF segment holds at most 64 KiB: a longer infotext is cut to fit.
_COMMENT_MAX_BYTES = 60_000


def infotext(png: bytes) -> str:
    """The generation parameters the runner wrote into a PNG (its `parameters` chunk)."""
    with Image.open(io.BytesIO(png)) as image:
        return str(image.info.get("parameters", ""))


def convert(png: bytes, kind: str, quality: int = 100, *, lossless: bool = False) -> bytes:
    """`png` as `kind` (a key of FORMATS): the PNG itself, unchanged, or JPEG / WebP at
    `quality` (0-100; `lossless` WebP ignores it) with the infotext kept in EXIF."""
    pillow = FORMATS[kind][0]
    if pillow == "PNG":
        return png
    with Image.open(io.BytesIO(png)) as image:
        text = str(image.info.get("parameters", ""))
        exif = Image.Exif()
        if text:
            comment = text.encode("utf-16-be")[: _COMMENT_MAX_BYTES // 2 * 2]
            exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + comment
        out = io.BytesIO()
        if pillow == "WEBP":
            image.save(out, format="WEBP", quality=quality, lossless=lossless, exif=exif)
        else:
            image.convert("RGB").save(out, format="JPEG", quality=quality, exif=exif)
    return out.getvalue()
