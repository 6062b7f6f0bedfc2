"""The CNI plugin: a tiny executable (shim.py) that forwards each request to the node's
agent, where handler.py does the work with warm sockets and datastore connections."""
