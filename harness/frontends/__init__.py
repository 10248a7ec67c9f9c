"""What people use: the `harness` command line, the pytest plugin, `repro`, reports, inspect."""
