"""The server's state as plain functions on an apsw connection; no sanic here.

Functions that change state run on the writer thread inside its
``BEGIN IMMEDIATE`` transaction and record their audit row in that same
transaction; the others run on read-only connections.
"""
