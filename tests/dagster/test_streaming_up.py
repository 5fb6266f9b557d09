"""Pieces of `mdp up` that need no running stack (the whole is verified by hand: README)."""

from __future__ import annotations

import pytest

from mdp_core.cli.up import dagster_url_for


@pytest.mark.parametrize(
    ("dsn", "url"),
    [
        ("postgresql://u:pw@db.example.com:5432/mdp", "postgresql+psycopg2://u:pw@db.example.com:5432/dagster"),
        ("postgres://u@db/mdp?sslmode=require", "postgresql+psycopg2://u@db/dagster?sslmode=require"),
        ("postgresql://postgres:@/mdp?host=/tmp/pg", "postgresql+psycopg2://postgres:@/dagster?host=/tmp/pg"),
    ],
)  # fmt: skip
def test_dagster_storage_url_is_derived_from_the_mdp_dsn(dsn: str, url: str) -> None:
    assert dagster_url_for(dsn) == url


def test_a_dsn_that_is_not_postgres_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="set MDP_DAGSTER_PG_URL"):
        dagster_url_for("mysql://u@db/mdp")
