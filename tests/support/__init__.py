"""Test infrastructure: real loopback servers and clients (fixtures in tests/conftest.py).

- dns_server.DNSTestServer  controllable DNS (UDP+TCP) for the proxy's --dns-resolver
- origin.OriginServer       path-driven HTTP/1.1 origin; origin.TcpEchoServer for CONNECT
- proxy.ProxyProcess        ``python -m dfproxy run`` as a subprocess
- clients.curl / RawClient  the curl binary; a byte-exact raw HTTP/1.1 client
"""
