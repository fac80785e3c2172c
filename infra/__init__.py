"""Composition root: config, CLI, connections, schema, the embedded broker and the processes."""
