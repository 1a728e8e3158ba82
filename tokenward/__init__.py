"""tokenward: the token store, the CLI and the pure placement core behind the mitmproxy addon."""
