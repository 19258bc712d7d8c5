"""The server side: strategy, screening, aggregation, round records, state and the builder.

``fedapp.server.build.build_strategy`` is the entry point; ``docs/architecture.md`` has the
map. Nothing is imported here, so importing one module does not load the others.
"""
