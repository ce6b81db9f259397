"""Job control without torch: settings, job records, queues, the result store, job views, the
model catalog, stage statistics, webhooks and the Redis connection. The API and the workers
both import it; it never imports torch."""
