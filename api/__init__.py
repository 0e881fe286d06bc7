"""The HTTP API: one aiohttp application (``app.create_app``) over a ``Store``.

``embedded`` wires it to the embedded store (``tokentrace serve``), ``distributed`` to the Redis view the
workers maintain (``tokentrace api``); ``routes`` has one module per resource, ``stores`` the implementations.
"""
