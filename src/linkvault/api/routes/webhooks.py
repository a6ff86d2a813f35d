"""/v1/webhooks: endpoints that receive signed events, and their deliveries."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Body, Path, Query, Response

from linkvault.api.routes.common import COMMON, E400, CurrentRuntime, make_router
from linkvault.api.schemas import (
    CreatedWebhook,
    CreateWebhook,
    DeliveryList,
    DeliveryView,
    Problem,
    WebhookList,
    WebhookView,
)
from linkvault.api.security import WriteKey

router = make_router("/v1/webhooks")

WebhookId = Annotated[UUID, Path(description="the webhook endpoint's id")]
DeliveryId = Annotated[UUID, Path(description="the delivery's id")]
E404 = {"model": Problem, "description": "no such webhook endpoint or delivery"}


@router.post(
    "",
    tags=["webhooks"],
    response_model=CreatedWebhook,
    status_code=201,
    summary="Add a webhook endpoint",
    description=(
        "Scope `write`. Events are POSTed to `url`, signed by the Standard Webhooks "
        "specification with the `secret` of this response: the only response that shows it. "
        "An https URL (http only on loopback, when LINKVAULT_WEBHOOK_ALLOW_HTTP_LOOPBACK is "
        "set); `events` empty means every event type."
    ),
    responses={**COMMON, 400: E400},
)
async def create_webhook(
    runtime: CurrentRuntime, body: Annotated[CreateWebhook, Body()], _key: WriteKey
) -> CreatedWebhook:
    created = await runtime.webhooks.register(body.url, [e.value for e in body.events])
    view = WebhookView.of(created.endpoint)
    return CreatedWebhook(**view.model_dump(), secret=created.secret)


@router.get(
    "",
    tags=["webhooks"],
    response_model=WebhookList,
    summary="List webhook endpoints",
    description="Scope `write`. Secrets are never shown again.",
    responses=COMMON,
)
async def list_webhooks(runtime: CurrentRuntime, _key: WriteKey) -> WebhookList:
    endpoints = await runtime.webhooks.list_endpoints()
    return WebhookList(items=[WebhookView.of(e) for e in endpoints])


@router.get(
    "/{webhook_id}",
    tags=["webhooks"],
    response_model=WebhookView,
    summary="Read a webhook endpoint",
    description="Scope `write`. `enabled` false with `disabled_reason` once deliveries gave up.",
    responses={**COMMON, 404: E404},
)
async def get_webhook(
    runtime: CurrentRuntime, webhook_id: WebhookId, _key: WriteKey
) -> WebhookView:
    return WebhookView.of(await runtime.webhooks.get(webhook_id))


@router.delete(
    "/{webhook_id}",
    tags=["webhooks"],
    status_code=204,
    response_class=Response,
    summary="Remove a webhook endpoint",
    description="Scope `write`. Its deliveries go with it.",
    responses={**COMMON, 404: E404},
)
async def delete_webhook(
    runtime: CurrentRuntime, webhook_id: WebhookId, _key: WriteKey
) -> Response:
    await runtime.webhooks.remove(webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    tags=["webhooks"],
    response_model=DeliveryList,
    summary="List an endpoint's deliveries",
    description="Scope `write`. Newest first, each with its attempts (status code or error).",
    responses={**COMMON, 404: E404},
)
async def list_deliveries(
    runtime: CurrentRuntime,
    webhook_id: WebhookId,
    _key: WriteKey,
    limit: Annotated[int, Query(ge=1, le=500, description="how many deliveries")] = 100,
) -> DeliveryList:
    records = await runtime.webhooks.deliveries(webhook_id, limit=limit)
    return DeliveryList(items=[DeliveryView.of(r.delivery, r.attempts) for r in records])


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    tags=["webhooks"],
    response_model=DeliveryView,
    status_code=202,
    summary="Send a delivery again",
    description=(
        "Scope `write`. The delivery is due at once, from the start of the retry schedule, "
        "under the same webhook-id; a disabled endpoint is enabled again."
    ),
    responses={**COMMON, 404: E404},
)
async def replay_delivery(
    runtime: CurrentRuntime, webhook_id: WebhookId, delivery_id: DeliveryId, _key: WriteKey
) -> DeliveryView:
    return DeliveryView.of(await runtime.webhooks.replay(webhook_id, delivery_id))
