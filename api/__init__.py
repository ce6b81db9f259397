"""The HTTP API (FastAPI): the app, its routes, request and response schemas, keys and limits,
and the web page; job control comes from `jobs` (settings too). Never imports torch."""
