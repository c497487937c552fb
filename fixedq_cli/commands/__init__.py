"""One module per subcommand; each defines ``HELP``, ``add_arguments(parser)`` and ``run(args)``.

Modules are imported only to build the parser; TensorFlow is imported inside ``run``.
"""

COMMANDS = [
    "quantize",
    "config",
    "check",
    "insert_rescaling",
    "demo",
    "convert",
    "run",
    "export",
    "import",
    "inspect",
    "mixed_precision",
    "qat",
]
