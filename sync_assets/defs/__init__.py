"""Dagster definitions, one folder per domain; each module stays thin over the rules and stores."""
