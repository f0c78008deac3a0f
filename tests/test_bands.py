"""One band-list parser for the command line, QGIS and the engine."""

from __future__ import annotations

import pytest

from backend.bands import BandListError, parse_bands
from backend.errors import UserInputError


@pytest.mark.parametrize("spec", ["4,3,2", "4 3 2", " 4, 3 ,2 ", "4;3;2", [4, 3, 2], (4, 3, 2)])
def test_every_spelling_gives_the_same_bands(spec) -> None:
    assert parse_bands(spec) == (4, 3, 2)


@pytest.mark.parametrize("spec", [None, "", "   ", []])
def test_empty_means_the_default_bands(spec) -> None:
    assert parse_bands(spec) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("red", "not a list of band numbers"),
        ("4,x", "not a list"),
        ("0,1", "start at 1"),
        ("-1", "start at 1"),
        ("1,1,2", "repeats a band"),
    ],
)
def test_bad_lists_are_one_line_user_errors(spec: str, message: str) -> None:
    with pytest.raises(BandListError, match=message) as info:
        parse_bands(spec)
    assert isinstance(info.value, UserInputError) and "\n" not in str(info.value)
