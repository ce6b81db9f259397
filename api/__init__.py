"""The HTTP API: routes, schemas, settings and dependencies. Never imports torch."""
