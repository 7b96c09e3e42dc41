"""The operator's side of the backfill bundle: a typed client of its HTTP API and the ``backfill``
command line built on it. Its own distribution, ``backfill-cli`` (``cli/pyproject.toml``), which
neither contains nor imports the server code (``shared``, ``functions``, ``emulators``); the main
project ships the same package for development. The deployed functions never ship it.
"""
