"""Scenarios: the file format, one plan per cell, the steps that run, the runner, the results.

`format` (pure models, no emulator code) -> `plan` (one frozen CellPlan per matrix cell)
-> `runner` (builds the image, boots, runs each step's handler from `steps`) -> `results`.
"""
