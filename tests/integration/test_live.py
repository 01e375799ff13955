"""Opt-in tests against the real SiliconFlow API: run only when SILICONFLOW_API_KEY is set."""

from __future__ import annotations

import pytest

from siliconflow_rerank import AsyncSiliconFlowClient, BadRequestError, SiliconFlowClient

from ..helpers import LIVE_API_KEY, LIVE_BASE_URL

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not LIVE_API_KEY, reason="live test: set SILICONFLOW_API_KEY to run"),
]

DOCUMENTS = ["apple", "banana", "fruit", "vegetable"]


def test_live_text_rerank():
    with SiliconFlowClient(api_key=LIVE_API_KEY, base_url=LIVE_BASE_URL) as client:
        response = client.rerank("Apple", DOCUMENTS, top_n=2, return_documents=True)
    assert len(response.results) == 2
    assert response.results[0].index == 0
    assert response.results[0].document is not None
    assert response.trace_id


async def test_live_async_rerank_and_usage():
    async with AsyncSiliconFlowClient(api_key=LIVE_API_KEY, base_url=LIVE_BASE_URL) as client:
        response = await client.rerank("Apple", DOCUMENTS)
    assert sorted(r.index for r in response.results) == [0, 1, 2, 3]
    assert response.usage is not None


def test_live_unknown_model_is_a_bad_request():
    client = SiliconFlowClient(api_key=LIVE_API_KEY, base_url=LIVE_BASE_URL)
    with client, pytest.raises(BadRequestError) as info:
        client.rerank("Apple", DOCUMENTS, model="nobody/no-such-reranker")
    assert info.value.trace_id
