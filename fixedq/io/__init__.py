"""File input and output shared by the API and the ``fixedq`` command (NumPy only, no TF).

- :mod:`fixedq.io.arrays`: read samples and labels from ``.npy``/``.npz`` files, checked;
- :mod:`fixedq.io.atomic`: write output files atomically, cleaning up on errors and signals.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fixedq.io import read_samples, write_atomic
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.zeros((2, 3), "float32"))
    >>> read_samples(path).shape
    (2, 3)
"""

from fixedq.io.arrays import (
    ArrayFileError,
    check_dtype,
    check_input_shape,
    check_samples,
    class_ids,
    read_arrays,
    read_labelled_samples,
    read_labels,
    read_samples,
)
from fixedq.io.atomic import (
    Terminated,
    atomic_open,
    atomic_path,
    file_mode,
    signals_raise,
    write_atomic,
)

__all__ = ["ArrayFileError", "Terminated", "atomic_open", "atomic_path", "check_dtype",
           "check_input_shape", "check_samples", "class_ids", "file_mode", "read_arrays",
           "read_labelled_samples", "read_labels", "read_samples", "signals_raise",
           "write_atomic"]
