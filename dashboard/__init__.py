"""One self-contained HTML page of what the tuning database holds: `nvc dashboard`."""
