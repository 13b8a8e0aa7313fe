"""HTTP routes, one module per area; each is mounted at the root and again under /v1."""
