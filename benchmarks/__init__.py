"""trouper's on-demand benchmarks, each measured against Pipecat 1.14 in the same run.

Run ``python -m benchmarks <name|all> [--quick] [--json FILE]`` (``--list`` shows the names).
Benchmarks are never run by the test suite; see ``docs/benchmarks.md``.
"""

from __future__ import annotations
