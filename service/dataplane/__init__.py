"""The transport-free data plane: what every route does, in one place.

REST, OpenAI and gRPC handlers translate their wire schema into neutral options, call the data
plane, and translate its events and results back. Resolving the model, checking the caller's
entitlement, applying defaults and limits, and counting tokens happen here, once.
"""
