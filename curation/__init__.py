"""Sample selection, filters, dedup, per-user caps, review queue, snapshots and user deletion."""
