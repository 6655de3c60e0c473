"""`python -m kuberde.agent`: `kuberde agent` without the CLI's imports.

The local runtime starts agents this way: a woken workspace's agent dials the gateway about
0.3 s sooner than through the full command line. Same environment, same log format.
"""

from __future__ import annotations

import os
import sys

from kuberde.agent.client import main
from kuberde.logs import configure_logging

configure_logging(os.environ.get("KUBERDE_LOG_LEVEL", "info"))
sys.exit(main())
