"""On-demand resync of chosen learners of one course (SPEC S2)."""
