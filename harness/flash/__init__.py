"""The ESP32 flash, on the host: its byte formats, a user's files, firmware facts, images.

Bytes in, typed facts out; nothing here starts an emulator. `size` (the one flash-size
type), `formats` (image header, partition table, otadata, app checks), `inputs` (a user's
file read and refused in one line), `firmware` (what a release has), `images` and
`recipes` (flash images built as users convert them), `inspect` (what a file is, as the
stable document `harness inspect --json` prints), `ops` (the flash after erases and
programs), `distinct` (the distinct states they pass through, and the classes a
power-on cannot tell apart) and `torn` (the flash a cut inside one leaves, by a model).
"""
