"""Print pip's package sources (find-links, index URLs: pip.conf and PIP_* variables, as
``pip config list`` shows them) as uv options: uv reads neither, and `make setup` installs with uv.
Run with the Python whose pip is configured; prints nothing where pip has no such settings."""

import subprocess
import sys

FLAGS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url"}

listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
options = []
for line in listing.splitlines():  # e.g. global.find-links='/opt/wheels' or :env:.extra-index-url='a b'
    key, _, value = line.partition("=")
    flag = FLAGS.get(key.rsplit(".", 1)[-1])
    if flag:
        options += [f"{flag} {source}" for source in value.strip().strip("'\"").split()]
print(" ".join(dict.fromkeys(options)))
