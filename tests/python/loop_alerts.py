"""A script written without any 429 handling: it loops over the alerts API faster than the
API allows and fails on the first error status.

Usage: loop_alerts.py BASE_URL COUNT
"""
import sys

import requests

base, count = sys.argv[1], int(sys.argv[2])
session = requests.Session()
for i in range(count):
    r = session.get(f"{base}/mde/api/alerts?$top=1", timeout=120)
    r.raise_for_status()
    assert len(r.json()["value"]) == 1
print(f"ok={count}")
