"""mitmproxy script entry for tokenward.

    mitmdump -s addons/tokenward.py --mode reverse:http://127.0.0.1:8545 \
        --set tokenward_db=tokenward.db --set connection_strategy=lazy

The addon lives in `addons.gateway`: mitmproxy runs a script without registering it as a
module, which dataclasses and pickling need, so this file only hands the addon over.
"""

from __future__ import annotations

from addons.gateway import TokenWard

addons = [TokenWard()]
