"""The HTTP transport's cross-cutting parts: error mapping, middleware, cancellation, SSE."""
