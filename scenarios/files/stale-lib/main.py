# The new app's main.py, installed with the update. Like MicroPythonOS's, it puts /lib in
# front of the frozen modules (a development override), then uses the framework's newer API.
import sys

sys.path.insert(0, "/lib")
import upysh

print("app: upysh.cp is", upysh.cp)
