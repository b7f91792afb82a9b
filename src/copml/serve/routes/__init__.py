"""The prediction server's routes, one module per part of the API; each module's routers
are mounted by :func:`copml.serve.app.create_app` in the order of the published OpenAPI."""
