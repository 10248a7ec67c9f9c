"""The `harness` commands, one module each: its parser beside its code.

Each module's `register(sub)` adds its command (or its group of commands) to the
`harness` parser with the function that runs it; options more than one command takes
are declared once, in `options`. harness.frontends.cli puts them together and runs one.
"""
