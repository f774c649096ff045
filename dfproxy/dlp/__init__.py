"""Data loss prevention: mask sensitive data in response bodies and access logs (Gloo ``dlp``).

``patterns`` holds the predefined regexes and the match-width bound, ``masker`` the pure
masking logic (one-shot and streaming); ``dfproxy.filters.dlp`` turns the config into filters.
"""
