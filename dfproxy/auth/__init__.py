"""Authentication and authorization logic, pure: htpasswd entries, Basic credentials,
failure tracking, bounded caches, the ext_authz request and answer mapping."""
