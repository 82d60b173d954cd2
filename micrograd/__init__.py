"""micrograd: a tensor autodiff engine in pure Python over NumPy."""
from micrograd.engine import Value, concat, embedding, maximum, minimum, set_dtype, tensordot, where

__all__ = ["Value", "concat", "embedding", "maximum", "minimum", "set_dtype", "tensordot", "where"]
