"""Access control: who may use the proxy (source rules, Gloo RBAC) and where it may go."""
