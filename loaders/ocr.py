"""OCR for PDF pages that have no text layer (scans, photographed pages) and for pictures (PNG, JPEG,
TIFF, HEIC, ...): PDFium renders a page, Pillow opens a picture, Debian's tesseract reads it (through
pytesseract). loaders.documents calls this only for pages whose text is empty, so a PDF with a text layer
never pays for it.

    image = page_image(pdfium_page)   # PIL image at ~300 dpi, pixels capped
    pictures = picture_pages(data)    # each page of a picture file (a multi-page TIFF has several)
    text = read(image)                # raises OCRError with a one-line reason
"""
from __future__ import annotations

import io
import math
from typing import Iterator

import pypdfium2.raw as pdfium_c
import pytesseract
from PIL import Image, ImageOps, ImageSequence
from pillow_heif import register_heif_opener

register_heif_opener()  # Pillow opens HEIC/HEIF from here on: what an iPhone's camera saves

DPI = 300  # what tesseract is trained for; 200 dpi lost small print in the paper's tables
MAX_RENDER_PIXELS = 12_000_000  # an A4/Letter page at 300 dpi is ~8.7 M; a poster-sized page is scaled down
MAX_IMAGE_PIXELS = 100_000_000  # a 600-dpi A3 scan is ~70 M; PDFium would decode a larger image whole
PAGE_TIMEOUT_S = 120
LANGUAGES = "eng"


class OCRError(Exception):
    """A page that could not be read by OCR. str() is one line."""


def page_image(page):
    """The page rendered for OCR (a PIL image), or OCRError when it holds an image too large to decode."""
    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        width, height = obj.get_px_size()
        if width * height > MAX_IMAGE_PIXELS:
            raise OCRError(f"an image of {width}×{height} pixels is over the {MAX_IMAGE_PIXELS // 10**6} M pixel "
                           "limit (a decompression bomb?)")
    points = page.get_width() * page.get_height()
    scale = min(DPI / 72, math.sqrt(MAX_RENDER_PIXELS / points)) if points > 0 else DPI / 72
    return page.render(scale=scale, grayscale=True).to_pil()


def picture_pages(data: bytes) -> Iterator[Image.Image]:
    """The pages of a picture file as grayscale images ready for OCR: every frame of a TIFF (scanners and
    fax write one file per document), the first of any other format (a GIF's frames are an animation).
    A phone photo is turned upright by its EXIF orientation, which tesseract does not read."""
    with Image.open(io.BytesIO(data)) as picture:  # UnidentifiedImageError for bytes that are no picture
        frames = ImageSequence.Iterator(picture) if picture.format == "TIFF" else [picture]
        for frame in frames:
            width, height = frame.size
            if width * height > MAX_IMAGE_PIXELS:
                raise OCRError(f"a picture of {width}×{height} pixels is over the {MAX_IMAGE_PIXELS // 10**6} M "
                               "pixel limit (a decompression bomb?)")
            page = ImageOps.exif_transpose(frame).convert("L")
            if width * height > MAX_RENDER_PIXELS:  # a 48 MP photo: tesseract needs no more than a 300-dpi page
                scale = math.sqrt(MAX_RENDER_PIXELS / (width * height))
                page.thumbnail((int(width * scale), int(height * scale)))
            yield page


def read(image) -> str:
    """The text tesseract reads in `image`."""
    try:
        return pytesseract.image_to_string(image, lang=LANGUAGES, timeout=PAGE_TIMEOUT_S)
    except pytesseract.TesseractNotFoundError:
        raise OCRError("tesseract is not installed (apt-get install tesseract-ocr, or make ocr)") from None
    except RuntimeError as err:  # pytesseract's timeout
        raise OCRError(f"tesseract gave no answer within {PAGE_TIMEOUT_S} s ({err})") from None
    except pytesseract.TesseractError as err:
        raise OCRError(f"tesseract failed: {' '.join(str(err.message).split())}") from None
