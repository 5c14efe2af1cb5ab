"""OCR for PDF pages that have no text layer (scans, photographed pages): PDFium renders the page, Debian's
tesseract reads it (through pytesseract). loaders.documents calls this only for pages whose text is empty,
so a PDF with a text layer never pays for it.

    image = page_image(pdfium_page)   # PIL image at ~300 dpi, pixels capped
    text = read(image)                # raises OCRError with a one-line reason
"""
from __future__ import annotations

import math

import pypdfium2.raw as pdfium_c
import pytesseract

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
