"""mitmproxy script entry for tokenward.

    mitmdump -s addons/tokenward.py --mode reverse:http://127.0.0.1:8545 \
        --set tokenward_db=tokenward.db --set connection_strategy=lazy

The addon lives in `tokenward.addons.gateway`: mitmproxy runs a script without registering it as a
module, which dataclasses and pickling need, so this file only hands the addon over.
"""

from __future__ import annotations

import sys
from pathlib import Path

# mitmproxy puts this script's folder first on sys.path while it loads the script, and this
# file, tokenward.py, would then be found as the package `tokenward` itself.
_FOLDER = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _FOLDER]

from tokenward.addons.gateway import TokenWard  # noqa: E402

addons = [TokenWard()]
