"""streamdiff: compare two ML checkpoints leaf by leaf, streaming, with bounded memory.

import streamdiff
report = streamdiff.diff("ckptA", "ckptB", atol=1e-6, rtol=1e-5)
report.exit_code, report.leaves
"""

__version__ = "0.1.0"

from .api import diff  # noqa: E402
from .datatypes import LeafResult, Report  # noqa: E402
from .errors import StreamdiffError  # noqa: E402
from .report import to_json  # noqa: E402

__all__ = ["diff", "Report", "LeafResult", "StreamdiffError", "to_json", "__version__"]
