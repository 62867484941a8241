"""The pipeline: options, units and their distribution, one interface, the whole gallery
build."""
