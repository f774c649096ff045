"""JWT authentication as Envoy's jwt_authn filter does it: token extraction, parsing, key
sets (local and remote), verification and the provider requirements (pure logic; the filter
in ``dfproxy.filters.jwt`` does the I/O)."""
