-- mdp schema, version 3: the ranges `mdp backfill` (and the Dagster history asset) fetched.
--
-- One row per historical request answered and stored: its bars are committed to mdp.bars,
-- or it had none (bars = 0: IB said "no data"). A backfill asks only for the parts of its
-- range that neither mdp.bars nor these rows cover, so a second run asks for nothing and a
-- run killed halfway resumes where it stopped. A range fetched with use_rth covers regular
-- trading hours only: an all-hours backfill does not count it.

CREATE TABLE mdp.backfill_ranges (
    symbol       text        NOT NULL,
    resolution   text        NOT NULL,
    what_to_show text        NOT NULL,
    use_rth      boolean     NOT NULL,
    start_ts     timestamptz NOT NULL,
    end_ts       timestamptz NOT NULL,
    bars         integer     NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backfill_ranges_pkey PRIMARY KEY (symbol, resolution, what_to_show, use_rth, start_ts),
    CONSTRAINT backfill_ranges_span_check CHECK (end_ts > start_ts),
    CONSTRAINT backfill_ranges_bars_check CHECK (bars >= 0)
);

COMMENT ON TABLE mdp.backfill_ranges IS
    'Historical ranges fetched by mdp backfill: [start_ts, end_ts) of one symbol, resolution, '
    'whatToShow and use_rth, with the number of bars it held (0: no data).';
