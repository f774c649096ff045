"""Protocol logic for HTTP/1.x: pure functions over bytes and values, no sockets."""
