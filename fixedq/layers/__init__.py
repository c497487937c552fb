"""Keras 3 layers of fixedq: quantized layers and float building blocks users train with.

Importing this package registers every layer with Keras serialization (package ``"fixedq"``),
so quantized models load in a fresh process with ``fixedq.load_model`` or
``keras.saving.load_model`` after ``import fixedq.layers``.
"""

from fixedq.layers.activation import QuantizedReLU
from fixedq.layers.affine import (
    QuantizedBatchNormalization,
    QuantizedNormalization,
    QuantizedRescaling,
)
from fixedq.layers.conv1d import QuantizedConv1D
from fixedq.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from fixedq.layers.global_max_pooling import QuantizedGlobalMaxPooling
from fixedq.layers.layer_normalization import QuantizedLayerNormalization
from fixedq.layers.merge import QuantizedAdd, QuantizedConcatenate
from fixedq.layers.multiply import QuantizedMultiply
from fixedq.layers.neural import (
    QuantizedConv2D,
    QuantizedConv2DTranspose,
    QuantizedDense,
    QuantizedDepthwiseConv2D,
    QuantizedDepthwiseConv2DTranspose,
)
from fixedq.layers.operators import OperationLayer, TFOpLambda
from fixedq.layers.padding import QuantizedZeroPadding
from fixedq.layers.params import QuantizationParams
from fixedq.layers.pooling import (
    QuantizedAveragePooling2D,
    QuantizedGlobalAveragePooling1D,
    QuantizedGlobalAveragePooling2D,
    QuantizedMaxPool2D,
)
from fixedq.layers.quantizers import Dequantizer, InputQuantizer, OutputQuantizer
from fixedq.layers.reshaping import (
    QuantizedDropout,
    QuantizedFlatten,
    QuantizedPermute,
    QuantizedReshape,
)
from fixedq.layers.slicing import QuantizedStridedSlice, StridedSlice
from fixedq.layers.softmax import QuantizedSoftmax
from fixedq.layers.table import (
    QuantizedActivation,
    QuantizedELU,
    QuantizedLeakyReLU,
    QuantizedPReLU,
)
from fixedq.layers.temporal import (
    BufferTempConv,
    DepthwiseBufferTempConv,
    PleiadesLayer,
    StatefulRecurrent,
)
from fixedq.layers.temporal.quantized import (
    QuantizedBufferTempConv,
    QuantizedDepthwiseBufferTempConv,
)
from fixedq.layers.temporal.quantized_recurrent import QuantizedStatefulRecurrent
from fixedq.layers.transformers import (
    AddPositionEmbs,
    Attention,
    ClassToken,
    ExtractToken,
    LayerMadNormalization,
    QuantizedAddPositionEmbs,
    QuantizedAttention,
    QuantizedClassToken,
    QuantizedExtractToken,
    QuantizedLayerMadNormalization,
    QuantizedShiftmax,
    Shiftmax,
)
from fixedq.layers.upsampling import QuantizedUpSampling2D

__all__ = [
    "BufferTempConv",
    "DepthwiseBufferTempConv",
    "PleiadesLayer",
    "QuantizedBufferTempConv",
    "QuantizedDepthwiseBufferTempConv",
    "QuantizedStatefulRecurrent",
    "StatefulRecurrent",
    "OperationLayer",
    "QuantizedMultiply",
    "QuantizedZeroPadding",
    "QuantizedGlobalMaxPooling",
    "QuantizedUpSampling2D",
    "TFOpLambda",
    "StridedSlice",
    "QuantizedStridedSlice",
    "AddPositionEmbs",
    "Attention",
    "ClassToken",
    "ExtractToken",
    "LayerMadNormalization",
    "QuantizedAddPositionEmbs",
    "QuantizedAttention",
    "QuantizedClassToken",
    "QuantizedExtractToken",
    "QuantizedLayerMadNormalization",
    "QuantizedShiftmax",
    "Shiftmax",
    "DepthwiseConv2DTranspose",
    "Dequantizer",
    "InputQuantizer",
    "OutputQuantizer",
    "QuantizationParams",
    "QuantizedAdd",
    "QuantizedAveragePooling2D",
    "QuantizedBatchNormalization",
    "QuantizedConcatenate",
    "QuantizedConv1D",
    "QuantizedConv2D",
    "QuantizedConv2DTranspose",
    "QuantizedDense",
    "QuantizedDepthwiseConv2D",
    "QuantizedDepthwiseConv2DTranspose",
    "QuantizedDropout",
    "QuantizedFlatten",
    "QuantizedGlobalAveragePooling1D",
    "QuantizedGlobalAveragePooling2D",
    "QuantizedMaxPool2D",
    "QuantizedPermute",
    "QuantizedReLU",
    "QuantizedReshape",
    "QuantizedRescaling",
    "QuantizedActivation",
    "QuantizedELU",
    "QuantizedLayerNormalization",
    "QuantizedLeakyReLU",
    "QuantizedNormalization",
    "QuantizedPReLU",
    "QuantizedSoftmax",
]
