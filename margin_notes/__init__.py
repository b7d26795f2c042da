__version__ = "0.1.0"
# The public API: every module's exported names (nbdev builds each module's __all__ from its #| export cells).
# Heavy optional back-ends (open_clip, timm) are imported lazily inside the functions that need them.
from .core import *
from .style import *
from .bound import *
from .margins import *
from .stats import *
from .mr2 import *
from .baselines import *
from .marc import *
from .dbm import *
from .lwr import *
from .data import *
from .models import *
from .metrics import *
from .probe import *
from .paper import *
from .engine import *
