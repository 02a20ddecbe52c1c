"""`sync-assets explain`: why the platform shows what it shows for one learner on one course."""
