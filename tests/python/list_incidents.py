"""A script written for the real API: lists every incident by following @odata.nextLink.

Pointed at the proxy, it needs no token and no change but the base URL.
Usage: list_incidents.py BASE_URL [TENANT]
"""
import sys

import requests

base = sys.argv[1]
headers = {"x-tenant-id": sys.argv[2]} if len(sys.argv) > 2 else {}
url = f"{base}/api/incidents?$top=25"
incidents = []
while url:
    r = requests.get(url, headers=headers, timeout=60)
    r.raise_for_status()
    page = r.json()
    incidents.extend(page["value"])
    url = page.get("@odata.nextLink")
print(f"incidents={len(incidents)} tenants={sorted({i['tenantId'] for i in incidents})}")
