"""`python -m kuberde.agent`: `kuberde agent` without the CLI's imports.

The local runtime starts agents this way: a woken workspace's agent dials the gateway about
0.3 s sooner than through the full command line. Same environment, same log format. Under a
root `kuberde up` the agent starts as root and drops to its workspace's account
(`AGENT_RUN_AS`) once its code is loaded and before it reads anything else.
"""

from __future__ import annotations

import logging
import os
import sys

from kuberde.agent.client import EXIT_CONFIG, main
from kuberde.agent.config import ConfigError
from kuberde.agent.privileges import drop_privileges
from kuberde.logs import configure_logging

configure_logging(os.environ.get("KUBERDE_LOG_LEVEL", "info"))
try:
    drop_privileges(os.environ)
except (ConfigError, OSError) as exc:
    logging.getLogger("kuberde.agent").error("cannot drop privileges: %s", exc)
    sys.exit(EXIT_CONFIG)
sys.exit(main())
