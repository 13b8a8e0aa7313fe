"""The DeepSeek-compatible HTTP server."""
