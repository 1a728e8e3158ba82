"""The pure core: token shapes, layouts, finding, stripping and placing a token, verdicts.

Nothing here does I/O or imports mitmproxy or sqlite: plain values in, plain values out.
"""
