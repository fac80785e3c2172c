"""Assignment, statistics, promotion and rollback policy, decision log."""
