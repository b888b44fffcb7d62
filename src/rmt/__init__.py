"""rmt: the Recurrent Memory Transformer for any Hugging Face model."""

from .backbones import load_backbone
from .config import RMTConfig
from .outputs import RMTOutput, RMTStreamOutput
from .recurrent import RecurrentMemoryTransformer

__all__ = ["RMTConfig", "RMTOutput", "RMTStreamOutput", "RecurrentMemoryTransformer", "load_backbone"]
__version__ = "0.1.0"
