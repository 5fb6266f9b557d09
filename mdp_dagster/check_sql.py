"""The SQL of the asset checks. Identifiers are constants; values are always parameters."""

from __future__ import annotations

__all__ = [
    "DUPLICATES_SQL",
    "DUPLICATE_KEYS_SQL",
    "GAPS_SQL",
    "NEWEST_SQL",
    "OHLC_COUNT_SQL",
    "OHLC_SAMPLE_SQL",
    "SYMBOLS_5S_SQL",
    "sql_for",
]

NEWEST_SQL = {
    "quotes": "SELECT max(ts) FROM mdp.quotes WHERE ts >= $1",
    "bars_5s": "SELECT max(ts) FROM mdp.bars WHERE resolution = '5s' AND ts >= $1",
}

# Each bar with the next one of its symbol, or the window's end after its last bar (so a
# symbol that stopped getting bars shows a gap up to now); only gaps of a slot or more.
GAPS_SQL = """
SELECT symbol, ts, next_ts
FROM (
    SELECT symbol, ts, coalesce(lead(ts) OVER (PARTITION BY symbol ORDER BY ts), $2) AS next_ts
    FROM mdp.bars
    WHERE resolution = '5s' AND ts >= $1 AND ts < $2
) g
WHERE next_ts - ts > interval '5 seconds'
"""
SYMBOLS_5S_SQL = """
SELECT count(DISTINCT symbol) FROM mdp.bars WHERE resolution = '5s' AND ts >= $1 AND ts < $2
"""

# A bar is sane when 0 < low <= open, close <= high < Infinity and 0 <= volume < Infinity
# (PostgreSQL sorts NaN above Infinity, so NaN fails too). $1 resolution, $2 start, $3 end.
OHLC_COUNT_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE NOT (low > 0 AND low <= least(open, close)
                                   AND greatest(open, close) <= high AND high < 'Infinity'
                                   AND volume >= 0 AND volume < 'Infinity'))  AS bad
FROM mdp.bars WHERE resolution = $1 AND ts >= $2 AND ts < $3
"""
OHLC_SAMPLE_SQL = """
SELECT symbol, ts, open, high, low, close, volume
FROM mdp.bars
WHERE resolution = $1 AND ts >= $2 AND ts < $3
  AND NOT (low > 0 AND low <= least(open, close) AND greatest(open, close) <= high
           AND high < 'Infinity' AND volume >= 0 AND volume < 'Infinity')
ORDER BY ts DESC
LIMIT 10
"""

# $1 start, $2 end (quotes); $1 start, $2 end, $3 resolution (bars).
DUPLICATES_SQL = {
    "quotes": """
        SELECT count(*) AS total, count(DISTINCT (symbol, ts)) AS keys
        FROM mdp.quotes WHERE ts >= $1 AND ts < $2
    """,
    "bars": """
        SELECT count(*) AS total, count(DISTINCT (symbol, resolution, ts)) AS keys
        FROM mdp.bars WHERE ts >= $1 AND ts < $2 AND resolution = $3
    """,
}
DUPLICATE_KEYS_SQL = {
    "quotes": """
        SELECT symbol, ts, count(*) AS n FROM mdp.quotes
        WHERE ts >= $1 AND ts < $2
        GROUP BY symbol, ts HAVING count(*) > 1 ORDER BY n DESC, ts DESC LIMIT 10
    """,
    "bars": """
        SELECT symbol, ts, count(*) AS n FROM mdp.bars
        WHERE ts >= $1 AND ts < $2 AND resolution = $3
        GROUP BY symbol, ts HAVING count(*) > 1 ORDER BY n DESC, ts DESC LIMIT 10
    """,
}


def sql_for(queries: dict[str, str], table: str) -> str:
    """The query for ``table``; ``ValueError`` naming the known tables for any other name."""
    try:
        return queries[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}: expected one of {', '.join(queries)}") from None
