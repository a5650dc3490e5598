"""model.readable_name writes every file name as an id the service takes (app/_params.py's rule), unique and
readable: what is already a valid id is unchanged."""
from __future__ import annotations

import os

import pytest

from app._params import _check_id
from model import readable_name

REFUSED_AS_IS = ["new\nline.jpg", "tab\there.jpg", "bell\x07.jpg", "del\x7f.jpg", "next-line\x85.jpg",
                 "sep\u2028.jpg", "para\u2029.jpg", "rtl\u202egpj.exe", " leading.jpg", "trailing.jpg ",
                 "cat/\u3000wide.jpg\u3000", "My Album/new\r\nline.jpg"]


@pytest.mark.parametrize("name", REFUSED_AS_IS)
def test_a_name_the_service_refuses_as_an_id_is_written_as_one_it_takes(name):
    from app._errors import ApiError

    with pytest.raises(ApiError):
        _check_id(name)
    written = readable_name(name)
    assert _check_id(written) == written and "\\" in written


def test_the_escapes_are_readable_and_keep_names_apart():
    assert readable_name("My Album/new\nline.jpg") == "My Album/new\\x0aline.jpg"
    assert readable_name("rtl\u202egpj.exe") == "rtl\\u202egpj.exe"
    assert readable_name(" a b.jpg ") == "\\x20a b.jpg\\x20"
    assert len({readable_name(n) for n in REFUSED_AS_IS}) == len(REFUSED_AS_IS)


@pytest.mark.parametrize("name", ["cat/0001.jpg", "My Album/a b.jpg", "café.jpg", "日本/写真.jpg", "a\\b.jpg"])
def test_a_name_that_is_a_valid_id_is_unchanged(name):
    assert readable_name(name) == name


def test_a_name_that_is_not_utf8_still_gets_its_bytes_written_as_xnn():
    latin1 = os.fsdecode(b"caf\xe9\n.jpg")
    assert readable_name(latin1) == "caf\\xe9\\x0a.jpg"
