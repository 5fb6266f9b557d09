-- mdp schema, version 1: quotes, bars (both partitioned by day on ts) and stream heartbeats.
--
-- Partitions (mdp.quotes_pYYYYMMDD, mdp.bars_pYYYYMMDD, each [day, day + 1) in UTC) are
-- created on demand by the sinks; retention drops whole partitions.
-- The CHECK constraints are a last line of defence behind model validation: a row that
-- violates one fails its batch with SQLSTATE 23514, and the coordinator isolates it.

CREATE TABLE mdp.quotes (
    symbol      text             NOT NULL,
    ts          timestamptz      NOT NULL,
    bid         double precision,
    ask         double precision,
    bid_size    double precision,
    ask_size    double precision,
    last        double precision,
    last_size   double precision,
    source      text             NOT NULL DEFAULT '',
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT quotes_pkey PRIMARY KEY (symbol, ts),
    -- 1-64 characters, none of them control characters
    CONSTRAINT quotes_symbol_check CHECK (length(symbol) BETWEEN 1 AND 64
                                          AND symbol !~ '[[:cntrl:]]'),
    -- "x < 'Infinity'" also refuses NaN, which PostgreSQL sorts above Infinity
    CONSTRAINT quotes_bid_check CHECK (bid > 0 AND bid < 'Infinity'),
    CONSTRAINT quotes_ask_check CHECK (ask > 0 AND ask < 'Infinity'),
    CONSTRAINT quotes_last_check CHECK (last > 0 AND last < 'Infinity'),
    CONSTRAINT quotes_bid_size_check CHECK (bid_size >= 0 AND bid_size < 'Infinity'),
    CONSTRAINT quotes_ask_size_check CHECK (ask_size >= 0 AND ask_size < 'Infinity'),
    CONSTRAINT quotes_last_size_check CHECK (last_size >= 0 AND last_size < 'Infinity')
) PARTITION BY RANGE (ts);

COMMENT ON TABLE mdp.quotes IS
    'Top-of-book quotes, one row per (symbol, ts); daily partitions quotes_pYYYYMMDD (UTC).';

CREATE TABLE mdp.bars (
    symbol      text             NOT NULL,
    resolution  text             NOT NULL,
    ts          timestamptz      NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    vwap        double precision,
    trade_count bigint,
    source      text             NOT NULL DEFAULT '',
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT bars_pkey PRIMARY KEY (symbol, resolution, ts),
    CONSTRAINT bars_symbol_check CHECK (length(symbol) BETWEEN 1 AND 64
                                        AND symbol !~ '[[:cntrl:]]'),
    CONSTRAINT bars_resolution_check CHECK (
        resolution IN ('1s', '5s', '10s', '15s', '30s', '1m', '5m', '15m', '30m', '1h', '1d')),
    CONSTRAINT bars_prices_check CHECK (
        open > 0 AND high > 0 AND low > 0 AND close > 0
        AND high < 'Infinity' AND low <= least(open, close) AND greatest(open, close) <= high),
    CONSTRAINT bars_volume_check CHECK (volume >= 0 AND volume < 'Infinity'),
    CONSTRAINT bars_vwap_check CHECK (vwap > 0 AND vwap < 'Infinity'),
    CONSTRAINT bars_trade_count_check CHECK (trade_count >= 0)
) PARTITION BY RANGE (ts);

COMMENT ON TABLE mdp.bars IS
    'OHLCV bars for [ts, ts + resolution), one row per (symbol, resolution, ts); '
    'daily partitions bars_pYYYYMMDD (UTC).';

-- Rollups read one resolution over a time range across all symbols.
CREATE INDEX bars_resolution_ts_idx ON mdp.bars (resolution, ts);

-- Liveness of running pipelines (written by the stream op, read by Dagster's supervisor
-- sensor and health checks): one row per heartbeat; counters is a JSON object of the
-- coordinator's counts (submitted, committed, dead_lettered, dropped, ...).
CREATE TABLE mdp.stream_heartbeats (
    stream   text        NOT NULL,
    run_id   text        NOT NULL,
    ts       timestamptz NOT NULL DEFAULT now(),
    counters jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT stream_heartbeats_pkey PRIMARY KEY (stream, ts),
    CONSTRAINT stream_heartbeats_counters_check CHECK (jsonb_typeof(counters) = 'object')
);

CREATE INDEX stream_heartbeats_run_idx ON mdp.stream_heartbeats (run_id, ts);
