#!/usr/bin/env python3
"""Check a FileStorage file with the real ZODB and print JSON.

usage: zodb_check.py PATH

Runs ZODB's own consistency checker (ZODB.scripts.fstest.check), then opens
PATH read-only with ZODB.FileStorage without any PATH.index (the index is
rebuilt by scanning), iterates every transaction and loads every object (see
zodb_list.py).  Prints

    {"fstest": "ok" | "<error text, with the file offset>",
     "listing": <the listing of zodb_list.py>}

and exits 0 when fstest passes, 1 when it reports an error.
"""

import os
import sys

from ZODB.scripts import fstest

from zodb_list import _Scrubber
from zodb_list import dump
from zodb_list import err
from zodb_list import listing


def run_fstest(path):
    """"ok" or the text of the error fstest reports (path scrubbed)."""
    scrub = _Scrubber(path)
    try:
        fstest.check(path)
    except fstest.FormatError as e:
        return scrub(str(e))
    except Exception as e:
        # fstest itself crashed on the file: report it as a failure too.
        return err(scrub, e)
    return "ok"


def check(path):
    return {"fstest": run_fstest(path), "listing": listing(path)}


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    if not os.path.exists(argv[1]):
        sys.exit("no such file: %s" % argv[1])
    out = check(argv[1])
    print(dump(out))
    sys.exit(0 if out["fstest"] == "ok" else 1)


if __name__ == '__main__':
    main(sys.argv)
