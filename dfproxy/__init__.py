__version__ = "0.1.0"

# Before any hot-path module is imported: use the mypyc-compiled modules only when they were
# built from the sources on disk (dfproxy/_native.py).
from dfproxy import _native

_native.select()
