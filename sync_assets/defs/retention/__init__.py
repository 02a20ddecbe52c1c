"""Retention: the weekly prune of old run history."""
