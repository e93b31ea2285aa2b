"""Pages through two tenants with `requests`, setting the tenant header on the first page only.

Every item of every page must belong to the tenant of that first page: following
@odata.nextLink must never cross into another tenant.
Usage: page_two_tenants.py BASE_URL TENANT [TENANT...]
"""
import sys

import requests

base = sys.argv[1]
seen = []
for tenant in sys.argv[2:]:
    url = f"{base}/api/incidents?$top=7"
    headers = {"x-tenant-id": tenant}
    first, pages, items = None, 0, 0
    while url:
        r = requests.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        page = r.json()
        for item in page["value"]:
            first = first or item["tenantId"]
            assert item["tenantId"] == first, f"{url}: {item['tenantId']} is not {first}"
        pages, items = pages + 1, items + len(page["value"])
        url = page.get("@odata.nextLink")
        headers = {}
    assert first not in seen, f"{tenant} answered from {first} again"
    seen.append(first)
    print(f"{tenant}: tenant={first} pages={pages} items={items}")
