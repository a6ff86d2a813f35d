from __future__ import annotations

import re

import pytest

from linkvault.stores import queries


def test_both_dialects_define_the_same_queries() -> None:
    assert set(queries.load("postgres")) == set(queries.load("sqlite"))


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_the_port_reads_filter_status_with_a_literal_never_a_parameter(dialect: str) -> None:
    for name in ("find_active_by_user", "find_expiring_soon"):
        sql = queries.load(dialect)[name]
        assert "status = 'active'" in sql, name
        assert not re.search(r"status\s*=\s*[$?]", sql), name


def test_a_duplicate_block_name_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse_named_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_an_empty_block_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        queries.parse_named_blocks("-- name: a\n-- just a comment\n")


def test_comments_inside_a_block_are_dropped() -> None:
    parsed = queries.parse_named_blocks("-- name: a\n-- why\nSELECT 1;\n")
    assert parsed == {"a": "SELECT 1"}
