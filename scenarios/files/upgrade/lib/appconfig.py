# The user's own module under /lib.
NAME = "fleet-42"
