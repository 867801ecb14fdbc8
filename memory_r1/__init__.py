"""Clients of the Memory-R1 service: the Python SDK (``memory_r1.client``) and the MCP
server (``memory_r1.mcp``)."""
