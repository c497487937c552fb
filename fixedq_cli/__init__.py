"""The ``fixedq`` command line (thin: parse, call the public API, print)."""
