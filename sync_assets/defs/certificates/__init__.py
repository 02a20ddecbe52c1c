"""Certificate work after the sync: completion events to certificate runs, exactly once."""
