import machine
machine.reset()  # a boot.py that resets: the device never reaches the REPL
