"""SPEC §4 as pure functions over polars frames: no I/O, no clock, easy to test."""
