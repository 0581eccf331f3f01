"""``python -m converter`` == ``convert-effnet``."""
import sys

from .cli import main

sys.exit(main())
