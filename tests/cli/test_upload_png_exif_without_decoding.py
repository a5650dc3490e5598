"""`simsearch index upload` reads a PNG's size, EXIF (--exif) and GPS (--gps) without decoding its pixels, and
gives what `index build` stores for the same file: Pillow reads the chunks after a PNG's pixels (where many tools
write eXIf, ImageMagick's "Raw profile type exif" and XMP) only as it decodes them, and PngImageFile.getexif()
decodes the whole image of every PNG without an eXIf before its pixels to look for them. (The end to end check,
over HTTP, of what upload and build store: tests/cli/test_upload.py.)"""
from __future__ import annotations

import io

import pytest
from PIL import Image

from cli._index import _displayed_metadata
from cli._upload import _described
from tests.photo_formats import png_after_pixels, png_chunk, png_with_broken_pixels

WANT = {"width": 40, "height": 60, "taken": "2024-06-01T14:03:22", "camera": "Apple iPhone 13",
        "lat": 48.85837, "lon": 2.294481, "altitude": 35.0}   # stored 60x40 on its side (orientation 6)


def _exif(model: str = "iPhone 13") -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Apple", model, 6
    exif.get_ifd(0x8769)[0x9003] = "2024:06:01 14:03:22"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.132), 3: "E", 4: (2.0, 17.0, 40.1316), 5: b"\x00",
                                 6: 35.0})
    return exif


def _png(exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), (20, 120, 60)).save(out, "PNG", **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def _raw_profile(exif: Image.Exif) -> bytes:
    """A tEXt chunk of EXIF as ImageMagick writes it into a PNG: hex, under "Raw profile type exif"."""
    raw = exif.tobytes()
    text = f"\nexif\n{len(raw):8d}\n" + "\n".join(raw.hex()[i:i + 72] for i in range(0, 2 * len(raw), 72))
    return png_chunk(b"tEXt", b"Raw profile type exif\x00" + text.encode("latin-1"))


def _xmp_turned() -> bytes:
    """An iTXt chunk of XMP that says the image is stored on its side (tiff:Orientation 6), as editors write it."""
    xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    return png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode())


PNGS = {   # name: (the PNG, what index build stores for it with --exif --gps)
    "exif before the pixels": (_png(_exif()), WANT),
    "exif after the pixels": (png_after_pixels(_png(_exif())), WANT),
    "exif as ImageMagick writes it, after the pixels": (png_after_pixels(_png(), _raw_profile(_exif())), WANT),
    "an XMP orientation after the pixels": (png_after_pixels(_png(), _xmp_turned()), {"width": 40, "height": 60}),
    # two eXIf chunks: build reads both, the second last; so does upload now (it read the first alone before)
    "exif before and other exif after the pixels": (
        png_after_pixels(_png(_exif()), png_chunk(b"eXIf", _exif("iPhone 15").tobytes()[6:]), moved=()),
        {**WANT, "camera": "Apple iPhone 15"}),
    "no exif": (_png(), {"width": 60, "height": 40}),
}


def _built(data: bytes) -> dict:
    """What `index build --exif --gps` stores for a PNG (cli/_index.py _decode: decoded whole, then read)."""
    import model

    with model.open_image(data) as im:
        im.load()
        return _displayed_metadata(im, True, True)


@pytest.mark.parametrize("name", PNGS)
def test_upload_describes_a_png_as_index_build_stores_it_wherever_its_exif_lies(name):
    data, want = PNGS[name]
    assert _built(data) == want
    assert _described(data, True, True) == want
    assert _described(data, False, False) == {"width": want["width"], "height": want["height"]}


@pytest.mark.parametrize("name", PNGS)
def test_upload_reads_a_pngs_metadata_without_decoding_its_pixels(name):
    """Broken pixels (no decoder reads them) and every other chunk as it was: the same metadata, so that nothing
    was decoded to find it (the service then refuses the file, as it refused it before)."""
    data, want = PNGS[name]
    broken = png_with_broken_pixels(data)
    with pytest.raises(OSError), Image.open(io.BytesIO(broken)) as im:   # Pillow cannot decode them
        im.load()
    assert _described(broken, True, True) == want


def test_a_png_cut_short_after_its_pixels_is_read_as_pillow_reads_it_decoding():
    """Chunks that do not lie end to end are left to Pillow, as before: a PNG cut inside the eXIf that follows its
    pixels has no metadata (the decode that would read that eXIf fails)."""
    data = PNGS["exif after the pixels"][0]
    cut = data[:data.index(b"eXIf") + 20]
    assert _described(cut, True, True) == {}
