__version__ = "0.1.0"
"margin_notes: margins for class-wise accuracy disparity and long-tailed recognition (MR2, MARC, DBM, LWR)."
from .core import *
