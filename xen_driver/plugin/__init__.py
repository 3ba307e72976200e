"""go-plugin transport: cookie, unix socket, handshake line, grpc.aio server, controller,
health, stdio and broker. Knows nothing of Nomad's services beyond "register these"."""
