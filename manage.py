#!/usr/bin/env python
"""Neocloud's command line: Django's manage.py, with plain one-sentence errors."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "neocloud.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"neocloud: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
