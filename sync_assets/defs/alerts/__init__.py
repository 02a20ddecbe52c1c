"""Alerts to the people who run the sync: a webhook call for each failed run."""
