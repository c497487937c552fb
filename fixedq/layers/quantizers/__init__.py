"""Quantizer layers: InputQuantizer (float -> grid), OutputQuantizer (grid -> coarser grid),
Dequantizer (end of the quantized part)."""

from fixedq.layers.quantizers.dequantizer import Dequantizer
from fixedq.layers.quantizers.input_quantizer import InputQuantizer
from fixedq.layers.quantizers.output_quantizer import OutputQuantizer

__all__ = ["Dequantizer", "InputQuantizer", "OutputQuantizer"]
