"""The compiled DNS fast path (`bridge/dns/_udpfast.c`); everything else is in pyproject.toml.

Optional: without a C compiler and Python's headers the package installs without it and
DNS is answered in Python alone. BRIDGE_REQUIRE_EXTENSION=1 makes a failed build an error
(the container image sets it).
"""

import os

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "bridge.dns._udpfast", ["bridge/dns/_udpfast.c"],
    optional=os.environ.get("BRIDGE_REQUIRE_EXTENSION") != "1",
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
)])
