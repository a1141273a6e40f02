"""The HTTP API: aiohttp application, middlewares, routes and handlers split by feature."""
