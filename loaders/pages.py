"""Pictures of PDF pages with a passage's quote highlighted, so a reader sees the sentence where it
stands on the page (Kotaemon and RAGFlow do this; Open WebUI only jumps to the page), and of the picture
(photo, scan) whose text OCR read, so a reader can check what OCR made of it.

    jpeg = highlighted_page(Path("data/files/<sha256>.pdf"), page=8, quotes=["...label smoothing of value 0.1..."])
    jpeg = picture_page(Path("data/files/<sha256>.picture"), page=1)

PDFium (pypdfium2) renders the page and gives the rectangles of any range of its characters. The text the
loader stored is PDFium's own text of the page with control characters dropped, so a quote is found in it
and its position mapped back to PDFium's character indexes; a quote not found (a page re-flowed by another
extractor) gives the plain page.
"""
from __future__ import annotations

import email
import email.policy
import io
import re
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, ImageDraw, ImageOps

from loaders.documents import PDFIUM_DROPPED, PDFIUM_LOCK, email_attachments

RENDER_SCALE = 1.4  # ~860 px wide for a Letter page: the highlighted words stay readable
PICTURE_WIDTH = 860  # px: a PDF page's width at RENDER_SCALE
HIGHLIGHT = (255, 214, 0, 110)  # translucent yellow, as a highlighter pen


def _find(page_text: str, quote: str) -> tuple[int, int] | None:
    """(start, end) of `quote` in `page_text`, whitespace-insensitive, in `page_text`'s indexes."""
    words = "".join(ch for ch in quote if ch not in PDFIUM_DROPPED).split()  # as stored before they were dropped
    if not words:
        return None
    pattern = r"\s*".join(re.escape(word) for word in words)
    match = re.search(pattern, page_text)
    return (match.start(), match.end()) if match else None


def highlighted_page(pdf: str | Path | bytes, page: int, quotes: list[str]) -> bytes:
    """JPEG of `page` (from 1) of the PDF at a path or in bytes, with each quote's lines highlighted."""
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(pdf if isinstance(pdf, bytes) else str(pdf))
        try:
            pdf_page = document[page - 1]
            text_page = pdf_page.get_textpage()
            raw = text_page.get_text_range()
            kept = [i for i, ch in enumerate(raw) if ch not in PDFIUM_DROPPED]  # as the loader does
            text = "".join(raw[i] for i in kept)
            height = pdf_page.get_height()
            boxes = []
            for quote in quotes:
                found = _find(text, quote)
                if found is None:
                    continue
                first, last = kept[found[0]], kept[found[1] - 1]
                for index in range(text_page.count_rects(first, last - first + 1)):
                    boxes.append(text_page.get_rect(index))
            image = pdf_page.render(scale=RENDER_SCALE).to_pil().convert("RGBA")
            text_page.close()
            pdf_page.close()
        finally:
            document.close()
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for left, bottom, right, top in boxes:  # PDF points, origin bottom-left
        draw.rectangle([left * RENDER_SCALE - 1, (height - top) * RENDER_SCALE - 1,
                        right * RENDER_SCALE + 1, (height - bottom) * RENDER_SCALE + 1], fill=HIGHLIGHT)
    out = io.BytesIO()
    Image.alpha_composite(image, overlay).convert("RGB").save(out, format="JPEG", quality=80)
    return out.getvalue()


def picture_page(path: str | Path, page: int = 1) -> bytes:
    """JPEG of a stored picture (page `page` of a multi-page TIFF), upright and ~860 px wide at most. No
    highlight: OCR's word boxes are not kept, and reading them again would take seconds a page."""
    with Image.open(path) as picture:
        picture.seek(page - 1)
        picture.draft("RGB", (PICTURE_WIDTH, PICTURE_WIDTH))  # a JPEG decodes at 1/2..1/8 size: a 48 MP photo in ~0.1 s
        image = ImageOps.exif_transpose(picture).convert("RGB")
    image.thumbnail((PICTURE_WIDTH, PICTURE_WIDTH * 4))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def email_attachment(data: bytes, filename: str) -> bytes | None:
    """The bytes of the stored e-mail's attachment named `filename` (the first of that name), or None: an
    attached PDF's page is drawn from the e-mail kept whole, as formats.email_message read it."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    return next((payload for name, payload in email_attachments(message) if name == filename), None)
