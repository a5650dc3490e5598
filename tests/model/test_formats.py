"""The files phones and cameras write (MPO, HEIC, AVIF) become the same model input as a JPEG of the
same picture, through the cheap reduced-scale decoding where the format has one."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

import model

from ..photo_formats import PHONE_FORMATS, encode_as, phone_sized


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def photos(shared_data) -> list[Image.Image]:
    """One real CIFAR-10 test image of each class, enlarged to 640x480 like a phone photo's shape."""
    out: dict[str, Image.Image] = {}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "test" and parts[2] not in out:
                out[parts[2]] = phone_sized(Image.open(tar.extractfile(m)))
            if len(out) == 10:
                break
    return [out[c] for c in sorted(out)]


def test_heic_avif_and_mpo_files_are_readable_and_scanned():
    assert model.HEIF_READABLE and model.AVIF_READABLE  # pillow-heif is a dependency; Pillow 11.2+ reads AVIF
    assert {".heic", ".heif", ".avif", ".mpo", ".jpg", ".png"} <= set(model.IMAGE_EXTENSIONS)


def test_an_mpo_is_read_as_its_first_picture_exactly_like_the_same_jpeg(photos):
    mpo, jpeg = encode_as(photos[0], "MPO"), encode_as(photos[0], "JPEG")
    assert _open(mpo).format == "MPO" and _open(mpo).n_frames == 2
    np.testing.assert_array_equal(model.to_model_array(_open(mpo), 3, 32), model.to_model_array(_open(jpeg), 3, 32))


def test_a_heic_is_embedded_from_its_thumbnail_when_that_is_large_enough(photos):
    data = encode_as(photos[0], "HEIC")
    im = _open(data)
    assert im.format == "HEIF" and im.size == (640, 480)
    small = model.to_model_array(im, 3, 32)
    thumbnail = _open(data)
    thumbnail.draft("RGB", (32, 32))
    assert thumbnail.size == (160, 120)
    # the embedded thumbnail was decoded, not the 640x480 picture
    np.testing.assert_array_equal(small, model.to_model_array(thumbnail, 3, 32))
    full = _open(data)
    full.load()  # decoded at full size first: no draft is possible any more
    assert np.abs(small.astype(int) - model.to_model_array(full, 3, 32)).mean() < 3


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_a_phone_format_query_finds_its_own_picture_among_jpegs(photos, fmt):
    embedder = model.Embedder.from_file(model.default_artifact_path(), device="cpu")
    gallery = embedder.embed([_open(encode_as(p, "JPEG")) for p in photos])
    queries = embedder.embed([_open(encode_as(p, fmt)) for p in photos])
    sims = queries @ gallery.T
    assert (sims.argmax(axis=1) == np.arange(len(photos))).all()
    assert sims.diagonal().min() > 0.95


def test_files_under_follows_linked_folders_ends_a_loop_and_leaves_out_hidden_and_dangling_files(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "cats").mkdir(parents=True)
    (elsewhere / "cats" / "a.jpg").write_bytes(b"a")
    (elsewhere / "dog.png").write_bytes(b"d")
    root = tmp_path / "photos"
    (root / "dogs" / ".thumbnails").mkdir(parents=True)
    (root / "dogs" / ".thumbnails" / "t.jpg").write_bytes(b"t")
    (root / "dogs" / "._1.jpg").write_bytes(b"apple double")
    (root / "dogs" / "1.jpg").symlink_to(elsewhere / "dog.png")      # a linked file, under its link's name
    (root / "dogs" / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")  # dangling
    (root / "cats").symlink_to(elsewhere / "cats")                      # a linked folder
    (root / "also-cats").symlink_to(elsewhere / "cats")                 # the same folder under a second name
    (elsewhere / "cats" / "up").symlink_to(root)                        # a loop back to the top
    (root / "dogs" / "self").symlink_to(root / "dogs")                  # a loop to itself
    names = model.files_under(root)
    # each link that leads back to a folder it lies in ("up", "self") is passed over
    assert names == ["also-cats/a.jpg", "cats/a.jpg", "dogs/1.jpg"]


def test_files_under_passes_over_links_to_the_folders_its_root_lies_in(tmp_path):
    photos = tmp_path / "photos"
    (photos / "dogs").mkdir(parents=True)
    (photos / "dogs" / "d.jpg").write_bytes(b"d")
    (photos / "top.jpg").write_bytes(b"t")
    root = photos / "ships"
    root.mkdir()
    (root / "s.jpg").write_bytes(b"s")
    (root / "loop").symlink_to("..")                 # the root's parent, by a relative link
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(tmp_path)       # its grandparent, by an absolute link, from further down
    (root / "dogs").symlink_to(photos / "dogs")      # a folder beside it: followed, as any linked folder
    assert model.files_under(root) == ["dogs/d.jpg", "s.jpg"]
    (tmp_path / "via").symlink_to(root)              # the root reached through a link: its real parents count
    assert model.files_under(tmp_path / "via") == ["dogs/d.jpg", "s.jpg"]


def test_a_file_that_does_not_decode_is_said_in_words_without_a_memory_address():
    def reason(data: bytes) -> str:
        try:
            Image.open(io.BytesIO(data)).load()
        except Exception as exc:  # noqa: BLE001
            return model._formats.unreadable_reason(exc, data)
        raise AssertionError("it decoded")

    assert reason(b"") == "UnidentifiedImageError: empty file (0 bytes)"
    assert reason(b"not a jpeg") == "UnidentifiedImageError: not an image Pillow can read (10 bytes)"
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(png, "PNG")
    assert reason(png.getvalue()[:60]).startswith("OSError: ")   # cut short: Pillow's own words, which say so


def test_a_hard_link_to_a_file_the_tar_lacks_is_left_out_as_a_link_not_read_as_a_file(tmp_path):
    # tarfile reads such a member with a KeyError: training's load_dataset stopped with a traceback on it
    with tarfile.open(tmp_path / "x.tar", "w") as tf:
        real = tarfile.TarInfo("a/1.jpg")
        real.size = 1
        tf.addfile(real, io.BytesIO(b"d"))
        for name, target in (("a/2.jpg", "a/1.jpg"), ("a/3.jpg", "a/gone.jpg")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.LNKTYPE, target
            tf.addfile(link)
    with tarfile.open(tmp_path / "x.tar") as tf:
        listed = model.list_tar(tf)
        assert sorted(listed.files) == ["a/1.jpg", "a/2.jpg"] and listed.links == ["a/3.jpg"]
        assert all(tf.extractfile(m).read() == b"d" for m in listed.files.values())


def test_list_tar_names_a_tar_s_members_as_files_under_names_the_folder_it_was_made_of(tmp_path):
    root = tmp_path / "photos"
    (root / "dogs" / ".thumbnails").mkdir(parents=True)
    (root / "dogs" / ".thumbnails" / "t.jpg").write_bytes(b"t")
    (root / "dogs" / "._1.jpg").write_bytes(b"apple double")
    (root / "dogs" / "1.jpg").write_bytes(b"d")
    (root / "dogs" / "2.jpg").hardlink_to(root / "dogs" / "1.jpg")   # stored as a hard link to 1.jpg
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "empty").mkdir()
    (root / "link.jpg").symlink_to(root / "dogs" / "1.jpg")
    with tarfile.open(tmp_path / "in.tar", "w") as tf:   # tar cf in.tar -C photos .
        tf.add(root, arcname=".")
    with tarfile.open(tmp_path / "of.tar", "w") as tf:   # tar cf of.tar photos
        tf.add(root, arcname="photos")
    with tarfile.open(tmp_path / "in.tar") as tf:
        made_inside = model.list_tar(tf)
        assert sorted(made_inside.files) == ["dogs/1.jpg", "dogs/2.jpg"]
        assert tf.extractfile(made_inside.files["dogs/2.jpg"]).read() == b"d"
    assert made_inside.links == ["link.jpg"] and sorted(made_inside.folders) == ["dogs", "empty"]
    assert made_inside.inside and sorted([*made_inside.files, *made_inside.links]) == model.files_under(root)
    with tarfile.open(tmp_path / "of.tar") as tf:
        made_of = model.list_tar(tf)
    assert sorted(made_of.files) == ["photos/dogs/1.jpg", "photos/dogs/2.jpg"] and not made_of.inside
    assert made_of.links == ["photos/link.jpg"] and sorted(made_of.folders) == ["photos", "photos/dogs", "photos/empty"]


def test_list_tar_takes_a_leading_slash_and_empty_parts_off_member_names_as_gnu_tar_does(tmp_path):
    # a hand-made tar of absolute names (GNU tar and tarfile.add strip the /): the names of the folder it was
    # made of, so that no part of one is empty (the CLI labelled such images "", training read its classes)
    with tarfile.open(tmp_path / "abs.tar", "w") as tf:
        for name in ("/abs/a/1.jpg", "//abs/b//2.jpg", "/abs/.thumbs/t.jpg", "/"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"d"))
    with tarfile.open(tmp_path / "abs.tar") as tf:
        listed = model.list_tar(tf)
    assert sorted(listed.files) == ["abs/a/1.jpg", "abs/b/2.jpg"] and not listed.inside
