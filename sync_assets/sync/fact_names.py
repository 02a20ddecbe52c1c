"""The names of the figures the sync records on its materialisations (Dagster metadata).

Writers (the steps' outcome facts, the Dagster adapter) and readers (the CLI summary, explain,
alerts, benchmarks) share these constants, so a renamed figure cannot silently read as zero.
"""

# Every course partition of every step.
COURSE_UUID = "course_uuid"
COURSE_TITLE = "course_title"
STATUS = "status"  # one of the STATUS_* values below
ERROR = "error"  # why a course failed (with STATUS_FAILED or STATUS_REFUSED)
NOTE = "note"
ROW_COUNT = "dagster/row_count"
RSS_AFTER_COURSE = "rss_mib_after_course"

STATUS_APPLIED = "applied"
STATUS_DRY_RUN = "dry run"
STATUS_FAILED = "failed"
STATUS_REFUSED = "refused"
STATUS_UNCHANGED = "unchanged"
STATUS_WITHDRAWN = "withdrawn"  # R1: known, but FutureLearn lists no runs for it
STATUS_NO_LONGER_KNOWN = "no longer known"  # R1: unmapped; its partition is about to be retired

# Once per step, on each of its partitions (figures of the step, not of a course).
API_REQUESTS = "api_requests"
API_NOT_MODIFIED = "api_not_modified_304"
API_RETRIES = "api_retries"
API_BYTES = "api_bytes"
API_REQUESTS_BY_STATUS = "api_requests_by_status"
API_SECONDS = "api_seconds"
RUN_PEAK_RSS = "run_peak_rss_mib"
SKIPPED_UNCHANGED = "skipped_unchanged"
FAILED_COURSES = "failed_courses"  # on a failed step: {partition key: why}

# course_runs
UNKNOWN_COURSE_LIST = "unknown_course_list"
WITHDRAWN_COURSE_LIST = "withdrawn_course_list"  # known, FutureLearn lists no runs (R1)

# enrolments, per course
RUNS = "runs"
REPORTS_UNCHANGED = "reports_unchanged_304"
MEMBERSHIPS = "memberships"
QUARANTINED_RECORDS = "quarantined_records"
QUARANTINED = "quarantined"  # {reason: records}

# linked_memberships, per course and per step
LINKED = "linked"
LINKS_MADE = "links_made"
UNLINKED = "unlinked"
AMBIGUOUS_EMAILS = "ambiguous_emails"
AMBIGUOUS_EMAIL_USERS = "ambiguous_email_users"
LINK_CONFLICTS = "link_conflicts"
LINK_CONFLICT_USERS = "link_conflict_users"
KEPT_FETCHED_UNLINKED = "kept_fetched_unlinked"
AMBIGUOUS_EMAILS_TOTAL = "ambiguous_emails_total"
LINK_CONFLICTS_TOTAL = "link_conflicts_total"
LOOKED_UP = "looked_up"

# latest_enrolments and activity_progress, per course
LEARNERS = "learners"
# Of them, those planned: whose report rows changed since the last write, or all (whole course).
LEARNERS_PLANNED = "learners_planned"
ENROLMENTS = "enrolments"
ACHIEVEMENTS_CREATED = "achievements_created"
ACHIEVEMENTS_UPDATED = "achievements_updated"
ACHIEVEMENTS_COMPLETED = "achievements_completed"
ACHIEVEMENTS_DROPPED = "achievements_dropped"
REFUSED = "refused"
PLAN_SECONDS = "plan_seconds"
WRITE_SECONDS = "write_seconds"
SQL_STATEMENTS = "sql_statements"
DRY_RUN = "dry_run"
TRANSITIONS_WRITTEN = "transitions_written"
COMPLETION_EVENTS_WRITTEN = "completion_events_written"

# Certificate jobs (C1–C4), once per op.
EVENTS_HANDLED = "events_handled"
ENROLMENTS_MOVED_TO_PENDING = "enrolments_moved_to_pending"
NOTIFICATIONS_WRITTEN = "notifications_written"
CERTIFICATES_ISSUED = "certificates_issued"
NUMBERS_BY_PROGRAMME = "numbers_by_programme"  # {programme: [certificate numbers]}

# Resync (S2): each chosen learner's outcome, by position and pseudonym.
RESYNC_OUTCOMES = "outcomes"
DUPLICATE_ROWS = "duplicate_rows"  # users with two rows in a course: must be none (R6)
