"""Run several ``fixedq`` command lines in ONE fresh process (TensorFlow is imported once).

Reads a JSON list of argument lists on stdin; writes a JSON object on stdout:
``{"results": [{"code", "out", "err"}, ...], "tensorflow_imported": bool}``. Used by the CLI
tests for the many bad-input cases, so that each does not pay for a TensorFlow start-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def main() -> None:
    from fixedq_cli.main import main as fixedq_main

    cases = json.load(sys.stdin)
    real_stdout = sys.stdout
    results = []
    for argv in cases:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = fixedq_main(argv)
            except SystemExit as exc:  # argparse errors and --help
                code = exc.code if isinstance(exc.code, int) else 1
        results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
    json.dump({"results": results,
               "tensorflow_imported": "tensorflow" in sys.modules or "keras" in sys.modules},
              real_stdout)


if __name__ == "__main__":
    main()
