"""Dagster concurrency pools: steps of overlapping runs wait for each other, visibly in the UI.

Limits come from the instance (`concurrency: pools` in dagster.yaml: one run per pool at a time,
enforced by the run queue). The database locks in `platform/transactions.py` are what makes
overlapping writers safe, across instances and machines, and for runs launched in process by
`sync-assets`; the pools add the queue an operator can see, and keep two runs from spending the
same Partners API quota at once.
"""

PARTNERS_API = "partners_api"  # steps that call the Partners API
PLATFORM_DB = "platform_db"  # steps that write progress or certificates
