"""ollama-turbo tasks for ``invoke`` in a checkout; the same tasks as the ``ollama-turbo`` command.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for each one's flags.
"""

import sys
from pathlib import Path

from ollama_turbo.cli import namespace, preflight
from ollama_turbo.core.settings_files import runtime_file

ROOT = Path(__file__).resolve().parent

preflight(ROOT, sys.argv)
ns = namespace(ROOT, runtime_file(sys.argv))
