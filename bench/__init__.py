"""Benchmarks of the gateway against bare references measured in the same run (`make bench`)."""
