"""The netstate.tcp lab: network namespaces as hosts, real sockets in real states."""
