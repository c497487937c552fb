"""FixedPoint tensor types and the integer arithmetic they are built on (see docs/numerics.md)."""
