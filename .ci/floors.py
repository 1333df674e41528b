#!/usr/bin/env python3
"""Prints pip constraints that pin every dependency of pyproject.toml (and of the extras named
as arguments) to its declared floor: `name>=1.2` becomes `name==1.2`. CI installs with them to
check that the floors are true."""
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
  project = tomllib.load(f)["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
  requirements += project["optional-dependencies"][extra]
for requirement in requirements:
  match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+?)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", requirement)
  if match:
    print(f"{match.group(1)}=={match.group(3)}")
