# The user's app, as a board in the field runs it: it counts its boots in /boots.txt
# (a write to the filesystem at every boot) and says which release runs it.
import os

import appconfig

release = os.uname().version.split()[0]
with open("/boots.txt", "a") as f:
    f.write(release + "\n")
print("main.py ran on", release, "for", appconfig.NAME)
