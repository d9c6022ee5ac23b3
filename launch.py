#!/usr/bin/env python
"""threestudio-style entry point: `python launch.py --config configs/dreamdist-mvdream.yaml --train --gpu 0 ...`.

Thin: everything lives in dreamdist3d.launch (see `python launch.py --help`)."""

import sys

from dreamdist3d.launch import main

if __name__ == "__main__":
    sys.exit(main())
