-- One subject's statistics over time (a key's minutes for a chart) read
-- through this index instead of every subject's rows of the range: 300
-- rows instead of 300,000 for a key's day by minute with 1,000 keys
-- (docs/benchmarks.md). Cheap to keep: the writer adds statistics at most
-- once a second, summed per row.
CREATE INDEX rollups_by_subject ON rollups (dimension, span, subject, bucket);
