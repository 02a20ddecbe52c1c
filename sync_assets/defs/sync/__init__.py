"""The nightly FutureLearn sync as Dagster assets partitioned by course."""
