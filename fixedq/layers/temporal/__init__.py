"""Temporal (TENN) layers: streaming FIFO convolutions, a complex linear recurrence, and the
Jacobi-polynomial Conv3D trained on clips. See docs/tenn.md.

Example:
    >>> from fixedq.layers.temporal import BufferTempConv
    >>> BufferTempConv(4, 3).kernel_size
    3
"""

from fixedq.layers.temporal.buffer_conv import BufferTempConv, DepthwiseBufferTempConv
from fixedq.layers.temporal.pleiades import PleiadesLayer, jacobi_basis
from fixedq.layers.temporal.recurrent import StatefulRecurrent
from fixedq.layers.temporal.state import FrameState, StreamingLayerMixin

__all__ = ["BufferTempConv", "DepthwiseBufferTempConv", "FrameState", "PleiadesLayer",
           "StatefulRecurrent", "StreamingLayerMixin", "jacobi_basis"]
