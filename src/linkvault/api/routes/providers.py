"""/v1/providers: the providers this deployment can connect to."""

from __future__ import annotations

from linkvault.api.routes.common import E401, E403, E422, E500, CurrentRuntime, make_router
from linkvault.api.schemas import ProviderList, provider_info
from linkvault.api.security import ReadKey

router = make_router()


@router.get(
    "/v1/providers",
    response_model=ProviderList,
    tags=["providers"],
    summary="List providers",
    description="Scope `read`.",
    responses={401: E401, 403: E403, 422: E422, 500: E500},
)
async def list_providers(runtime: CurrentRuntime, _key: ReadKey) -> ProviderList:
    return ProviderList(items=[provider_info(p) for p in runtime.registry])
