"""A 'factory' that a hostile model file may name in its metadata: calling it leaves a marker file, so a test can
tell whether convpipe ran code a file chose (it must not). Only the CLI tests import it (tests/ on PYTHONPATH)."""

import os


def pwned():
    with open(os.environ["CONVPIPE_PWNED_MARKER"], "w") as f:
        f.write("code named by a model file was run\n")
    raise SystemExit("pwned")
