"""A CI check against `defender-proxy demo`: lists every incident and every Graph alert by
following @odata.nextLink, then arms a throttle and a token fault through the sandbox's
controls and checks that the next requests still succeed (the proxy absorbs both).

Usage: offline_ci.py PROXY_URL SANDBOX_URL
"""
import sys

import requests

proxy, sandbox = sys.argv[1], sys.argv[2]
session = requests.Session()


def get_all(path):
    """Every item of a list, page by page."""
    items, url = [], f"{proxy}{path}"
    while url:
        r = session.get(url, timeout=60)
        r.raise_for_status()
        page = r.json()
        items.extend(page["value"])
        url = page.get("@odata.nextLink")
    return items


def control(name, body=None):
    r = requests.post(f"{sandbox}/_sandbox/{name}", json=body, timeout=10)
    assert r.status_code == 204, (name, r.status_code, r.text)


incidents = get_all("/api/incidents?$top=25")
alerts = get_all("/graph/v1.0/security/alerts_v2?$top=100")

# Throttling: the API answers the next two requests 429 with Retry-After: 1.
control("api-fault", {"kind": "status", "status": 429, "retry_after": "1", "times": 2})
machines = get_all("/mde/api/machines?$top=40")

# A token fault: every issued token is revoked, and the token endpoint fails once.
control("revoke")
control("token-fault", {"kind": "status", "status": 503, "retry_after_secs": 1, "times": 1})
again = get_all("/api/incidents?$top=100")

stats = requests.get(f"{sandbox}/_sandbox/stats", timeout=10).json()
assert stats["rejected_tokens"]["revoked"] >= 1, stats
print(
    f"incidents={len(incidents)} alerts={len(alerts)} machines={len(machines)} "
    f"again={len(again)}"
)
