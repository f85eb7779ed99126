"""The `kiln` command line: the one place that uses both the exporter and the gateway."""
