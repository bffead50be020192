"""The privileged hyperhive daemon: sockets, store, broker, events. Runs as root in one trio.run."""
