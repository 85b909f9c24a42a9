"""graphopt.units: one byte-size reading for every option (powers of 10 and of 2, never guessed)."""
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphopt.errors import GraphoptError, SizeError
from graphopt.units import UNITS, format_bytes, parse_budget, parse_bytes

DECIMAL = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
BINARY = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def test_the_examples_people_write():
    assert parse_bytes("4096") == 4096
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("2GiB") == 2**30 * 2
    assert parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("512B") == 512
    assert parse_bytes("2 gib") == parse_bytes("2GiB")   # case and a space do not matter
    assert parse_bytes("1_000_000") == 10**6
    assert parse_bytes("1.1GiB") == int(Fraction("1.1") * 2**30)  # no float rounding on the way
    assert parse_bytes(123) == 123


@pytest.mark.parametrize("text, needle", [
    ("1.5", "a decimal needs a unit"),   # used to become 1 byte
    ("1.", "a decimal needs a unit"),
    ("2M", "ambiguous"),                  # used to mean 2 MiB
    ("16g", "ambiguous"),
    ("3XB", "unknown unit"),
    ("lots", "cannot read it as bytes"),
    ("", "cannot read it as bytes"),
    ("1e9", "cannot read it as bytes"),
    ("-5", "cannot be negative"),
    ("GiB", "cannot read it as bytes"),
])
def test_bad_sizes_are_one_line_naming_the_option(text, needle):
    with pytest.raises(SizeError) as info:
        parse_bytes(text, option="--memory-cap")
    msg = str(info.value)
    assert needle in msg and msg.startswith("--memory-cap") and "\n" not in msg
    assert isinstance(info.value, GraphoptError)


@given(st.integers(min_value=0, max_value=2**62))
def test_format_then_parse_is_the_identity(n):
    text = format_bytes(n)
    assert parse_bytes(text) == n
    assert text == str(n) or text[-1] == "B"


@given(st.integers(min_value=0, max_value=10**6),
       st.sampled_from(sorted({**DECIMAL, **BINARY}.items())))
def test_whole_numbers_with_a_unit(m, unit):
    name, factor = unit
    assert parse_bytes(f"{m}{name}") == m * factor
    assert parse_bytes(f"{m} {name.lower()}") == m * factor


@given(st.integers(min_value=0, max_value=10**4), st.integers(min_value=0, max_value=999),
       st.sampled_from(sorted(BINARY.items())))
def test_decimals_with_a_unit_round_down_to_whole_bytes(whole, frac, unit):
    name, factor = unit
    text = f"{whole}.{frac:03d}{name}"
    exact = (whole * 1000 + frac) * factor / Fraction(1000)
    assert parse_bytes(text) == int(exact)
    assert 0 <= exact - parse_bytes(text) < 1


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=99))
def test_a_bare_decimal_is_always_refused(whole, frac):
    with pytest.raises(SizeError):
        parse_bytes(f"{whole}.{frac:02d}")


def test_the_two_families_differ():
    for d, b in (("KB", "KiB"), ("MB", "MiB"), ("GB", "GiB"), ("TB", "TiB")):
        assert parse_bytes(f"1{b}") > parse_bytes(f"1{d}")
    assert set(UNITS) == {u.lower() for u in [*DECIMAL, *BINARY]} | {"b"}


def test_format_bytes_reads_well():
    assert format_bytes(0) == "0"
    assert format_bytes(2**30) == "1GiB"
    assert format_bytes(1536) == "1.5KiB"
    assert format_bytes(2 * 10**9) == "2GB"
    assert format_bytes(1001) == "1001"
    with pytest.raises(ValueError):
        format_bytes(-1)


def test_budget_fraction_or_bytes():
    assert parse_budget("0.5") == 0.5 and parse_budget("1.0") == 1.0 and parse_budget(".25") == .25
    assert parse_budget("1") == 1          # no decimal point: one byte, not the whole budget
    assert parse_budget("64MiB") == 64 * 2**20 and parse_budget("2GB") == 2 * 10**9
    for bad, needle in (("1.5", "fraction must lie in (0, 1]"), ("0.0", "fraction must lie"),
                        ("0", "must be positive"), ("lots", "neither a fraction"),
                        ("2M", "ambiguous")):
        with pytest.raises(SizeError, match=None) as info:
            parse_budget(bad)
        assert needle in str(info.value) and str(info.value).startswith("--budget")


@given(st.floats(min_value=1e-6, max_value=1.0))
def test_any_fraction_in_range_is_a_fraction(x):
    text = f"{x:.6f}"
    if float(text) > 0:
        assert parse_budget(text) == pytest.approx(float(text))
