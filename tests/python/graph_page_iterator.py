"""Pages through the Graph security incidents of two tenants with Microsoft's Graph SDK for
Python and its PageIterator, the way the issue's user did: the tenant header goes on the first
request only, and the iterator follows @odata.nextLink on its own, without it.

Every incident of every page must belong to the tenant of the first page.
Usage: graph_page_iterator.py GRAPH_BASE_URL TENANT [TENANT...]
"""
import asyncio
import sys

from kiota_abstractions.authentication import AnonymousAuthenticationProvider
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.security.incidents.incidents_request_builder import (
    IncidentsRequestBuilder,
)
from msgraph_core import PageIterator


async def page_through(base: str, tenant: str) -> tuple[str, int, int]:
    adapter = GraphRequestAdapter(AnonymousAuthenticationProvider())
    adapter.base_url = base
    client = GraphServiceClient(request_adapter=adapter)
    query = IncidentsRequestBuilder.IncidentsRequestBuilderGetQueryParameters(top=7)
    config = RequestConfiguration(query_parameters=query)
    config.headers.add("x-tenant-id", tenant)
    first_page = await client.security.incidents.get(request_configuration=config)
    first = first_page.value[0].tenant_id
    counts = {"items": 0, "pages": 1}

    def check(incident) -> bool:
        assert incident.tenant_id == first, f"{incident.tenant_id} is not {first}"
        counts["items"] += 1
        return True

    iterator = PageIterator(first_page, adapter)
    original = iterator.next

    async def counted_next():
        page = await original()
        counts["pages"] += page is not None
        return page

    iterator.next = counted_next
    await iterator.iterate(check)
    return first, counts["pages"], counts["items"]


async def main() -> None:
    base, seen = sys.argv[1], []
    for tenant in sys.argv[2:]:
        first, pages, items = await page_through(base, tenant)
        assert first not in seen, f"{tenant} answered from {first} again"
        seen.append(first)
        print(f"{tenant}: tenant={first} pages={pages} items={items}")


asyncio.run(main())
