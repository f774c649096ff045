"""Connections to origins: connect (Happy Eyeballs), the HTTP/1.1 client codec, the pool."""
