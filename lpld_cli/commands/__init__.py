"""One thin module per command: parse options, build a config, call the core, print."""
