"""Explain one learner's progress on one course, from the launchpad (issue 22)."""
