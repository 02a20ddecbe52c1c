"""Runs started from the command line, through the Dagster instance at DAGSTER_HOME.

Not definitions: the code location (`sync_assets.definitions`, `defs/`) holds those. This
package opens the instance, creates runs with the code location's origin (so they show under
their job in the UI, like the schedule's), executes them here or queues them for the daemon,
follows them and reads their summary back from the event log.
"""
