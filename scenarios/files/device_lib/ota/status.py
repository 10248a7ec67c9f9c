"""`ota.status` in the shape of micropython-esp32-ota's before its v0.3 fix: it asks
ESP-IDF for the boot partition without first checking that the board has otadata."""

import sys

from esp32 import Partition


def boot_ota():
    return Partition(Partition.BOOT)


def status():
    running = Partition(Partition.RUNNING).info()[4]
    print("Micropython %s has booted from partition '%s'." % (sys.version.split(" ")[2], running))
    print("Will boot from partition '%s' on next reboot." % boot_ota().info()[4])
    print(
        "The next OTA partition for update is '%s'."
        % Partition(Partition.RUNNING).get_next_update().info()[4]
    )
