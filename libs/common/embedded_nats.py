"""The old import path of `libs.common.runtime.embedded_nats`, for tools outside this repo.

The shared benchmark harness (`../shared/bench/perf-compare/mb_up.py`) imports
`libs.common.embedded_nats` and replaces `free_port` and `EmbeddedNats.config_text`
on it. A re-export would take its patches on a copy of the names, so this name
*is* the runtime module: replacing the entry in `sys.modules` makes both import
paths one module object. Drop it once the harness imports the new path.
"""

from __future__ import annotations

import sys

from libs.common.runtime import embedded_nats as _module

sys.modules[__name__] = _module
