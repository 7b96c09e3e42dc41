"""The operator's side of the backfill bundle: a typed client of its HTTP API and the ``backfill``
command line built on it. Installed with the ``cli`` extra; the deployed functions never ship it.
"""
