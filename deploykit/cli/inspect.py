"""Read commands: workers, queues, scheduled, status (filled in by the inspection work)."""
