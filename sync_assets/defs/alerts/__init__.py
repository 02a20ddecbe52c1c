"""Alerts to the people who run the sync: a webhook call for each failed run, each schedule or
sensor that starts failing, and each run stuck in the queue."""
